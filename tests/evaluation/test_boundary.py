"""Boundary IoU and trimap accuracy checked against an independent OpenCV / numpy computation.

The references here follow the published recipes directly (cv2.copyMakeBorder + cv2.erode for the
Boundary IoU bands, explicit neighbour comparisons + cv2.dilate for the trimap) and share no code
with refineseg.evaluation.boundary.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from refineseg.evaluation.boundary import (
    BoundaryIoU,
    TrimapAccuracy,
    boundary_distance,
    boundary_width,
    label_boundary,
    mask_to_boundary,
)
from refineseg.evaluation.metrics import ConfusionMatrix, summarize

IGNORE = 255


# ---------------------------------------------------------------- independent references


def ref_dilation(h: int, w: int, ratio: float) -> int:
    return max(1, int(round(ratio * np.sqrt(h**2 + w**2))))


def ref_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The Boundary IoU API recipe: zero border, erode d times with 3x3 ones, crop, mask - eroded."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return (mask.astype(np.uint8) - eroded).astype(bool)


def ref_band_counts(pred: np.ndarray, target: np.ndarray, num_classes: int, ratio: float = 0.02):
    """Per-class (intersection, union) of the GT and predicted bands, ignored GT pixels removed afterwards."""
    d = ref_dilation(*target.shape, ratio)
    valid = target != IGNORE
    inter, union = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        g = ref_band(target == c, d) & valid
        p = ref_band(pred == c, d) & valid
        inter[c], union[c] = (g & p).sum(), (g | p).sum()
    return inter, union


def ref_trimap_counts(pred: np.ndarray, target: np.ndarray, widths=range(1, 41)):
    """(correct, total) per width: boundary = a 3x3 neighbour (inside the image) differs; band = w dilations."""
    h, w = target.shape
    padded = np.pad(target.astype(np.int32), 1, mode="edge")  # copies of in-image neighbours: no new values
    boundary = np.zeros((h, w), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            boundary |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != target
    valid = target != IGNORE
    boundary &= valid
    correct, total = [], []
    for width in widths:
        band = cv2.dilate(boundary.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width).astype(bool)
        total.append(int((band & valid).sum()))
        correct.append(int((band & valid & (pred == target)).sum()))
    return np.array(correct), np.array(total)


def blobs(rng: np.random.Generator, h: int, w: int, num_classes: int, shapes: int = 6) -> np.ndarray:
    """A label map of random filled circles and rectangles (many touch the image border)."""
    labels = np.full((h, w), rng.integers(num_classes), np.uint8)
    for _ in range(shapes):
        c = int(rng.integers(num_classes))
        x, y = int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5))
        if rng.random() < 0.5:
            cv2.circle(labels, (x, y), int(rng.integers(1, max(h, w) // 2 + 2)), c, thickness=-1)
        else:
            cv2.rectangle(labels, (x, y), (x + int(rng.integers(0, w)), y + int(rng.integers(0, h))), c, -1)
    return labels


def noisy_prediction(rng: np.random.Generator, target: np.ndarray, num_classes: int) -> np.ndarray:
    """The target with shifted regions and a few random blobs: mostly right, wrong near edges."""
    pred = np.roll(np.where(target == IGNORE, 0, target), (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
    other = blobs(rng, *target.shape, num_classes, shapes=3)
    return np.where(rng.random(target.shape) < 0.05, other, pred).astype(np.uint8)


def with_ignore(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    out = target.copy()
    y, x = int(rng.integers(0, target.shape[0])), int(rng.integers(0, target.shape[1]))
    out[y : y + int(rng.integers(2, 12)), x : x + int(rng.integers(2, 12))] = IGNORE
    return out


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).long()


# ---------------------------------------------------------------- band construction


def test_boundary_width_is_ratio_of_diagonal_at_least_one():
    for h, w, ratio in [(64, 64, 0.02), (1024, 2048, 0.02), (10, 10, 0.02), (512, 683, 0.005), (3, 1, 0.5)]:
        assert boundary_width(h, w, ratio) == ref_dilation(h, w, ratio)
    assert boundary_width(1024, 2048) == 46 and boundary_width(10, 10) == 1


def test_bands_match_opencv_on_random_blobs():
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = int(rng.integers(1, 48)), int(rng.integers(1, 48))
        labels = blobs(rng, h, w, 4)
        d = int(rng.integers(1, 15))
        fast = label_boundary(torch.from_numpy(labels), d).numpy()
        for c in range(4):
            want = ref_band(labels == c, d)
            got = mask_to_boundary(torch.from_numpy(labels == c), d).numpy()
            assert np.array_equal(got, want), (trial, c, h, w, d)
            assert np.array_equal(fast & (labels == c), want), (trial, c, h, w, d)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_band_edge_cases(d):
    h, w = 20, 31
    empty = np.zeros((h, w), bool)
    full = np.ones((h, w), bool)
    vline = empty.copy()
    vline[3:17, 10] = True
    hline_on_border = empty.copy()
    hline_on_border[0, :] = True
    corner = empty.copy()
    corner[:6, :6] = True
    dot = empty.copy()
    dot[10, 15] = True
    for mask in (empty, full, vline, hline_on_border, corner, dot):
        want = ref_band(mask, d)
        assert np.array_equal(mask_to_boundary(torch.from_numpy(mask), d).numpy(), want)
        assert np.array_equal(label_boundary(torch.from_numpy(mask.astype(np.uint8)), d).numpy() & mask, want)
    assert not mask_to_boundary(torch.from_numpy(empty), d).any()
    # A full mask's band is the d-pixel frame along the image border: the zero border erodes it.
    frame = mask_to_boundary(torch.from_numpy(full), d).numpy()
    assert frame.sum() == h * w - (h - 2 * d) * (w - 2 * d)
    assert np.array_equal(mask_to_boundary(torch.from_numpy(vline), d).numpy(), vline)  # 1-px line: all band
    # Batched (N, H, W) masks give the per-mask bands.
    batch = torch.from_numpy(np.stack([corner, vline, full]))
    assert torch.equal(mask_to_boundary(batch, d), torch.stack([mask_to_boundary(m, d) for m in batch]))


def test_tiny_images_and_bad_dilation():
    for shape in [(1, 1), (1, 7), (5, 1), (2, 2)]:
        mask = np.ones(shape, bool)
        assert np.array_equal(mask_to_boundary(torch.from_numpy(mask), 3).numpy(), ref_band(mask, 3))
        assert label_boundary(torch.from_numpy(mask.astype(np.uint8)), 3).all()
    with pytest.raises(ValueError, match="dilation"):
        mask_to_boundary(torch.ones(4, 4, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="dilation"):
        label_boundary(torch.ones(4, 4, dtype=torch.uint8), 0)


# ---------------------------------------------------------------- Boundary IoU


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    labels = np.zeros((size, size), np.uint8)
    labels[top : top + side, left : left + side] = 1
    return labels


def test_identical_masks_score_one():
    rng = np.random.default_rng(1)
    labels = blobs(rng, 40, 50, 3)
    metric = BoundaryIoU(3)
    metric.update(t(labels), t(labels))
    result = metric.compute()
    present = set(np.unique(labels).tolist())
    for c in range(3):
        assert (result["BoundaryIoU"][c] == 1.0) if c in present else math.isnan(result["BoundaryIoU"][c])
    assert result["mBoundaryIoU"] == 1.0


@pytest.mark.parametrize(
    "shift, inter, union",
    [
        # 64 x 64 image -> d = round(0.02 * 90.5) = 2. GT square rows/cols [20, 40), band = 400 - 16**2 = 144 px.
        # Shift right by 1: top/bottom 2+2 rows overlap on 19 columns (76 px); middle 16 rows share
        # columns 21 and 39 (32 px) -> 108; union = 144 + 144 - 108 = 180.
        (1, 108, 180),
        # Shift by 2: rows 76 -> 4 x 18 = 72; middle columns {20,21,38,39} vs {22,23,40,41}: none.
        (2, 72, 216),
    ],
)
def test_shifted_square_known_answer(shift, inter, union):
    gt, pred = square(64, 20, 20, 20), square(64, 20, 20 + shift, 20)
    metric = BoundaryIoU(2)
    got_inter, got_union = metric.update(t(pred), t(gt))
    assert int(got_inter[1]) == inter and int(got_union[1]) == union
    assert metric.compute()["BoundaryIoU"][1] == pytest.approx(inter / union)
    assert np.array_equal(got_inter.numpy(), ref_band_counts(pred, gt, 2)[0])


def test_ignore_pixels_are_removed_from_both_bands():
    # 32 x 32 -> d = round(0.905) = 1. GT: class 0 with an 8 x 8 ignored square; the border frame
    # (124 px) and the 1-px ring around the ignored square (10*10 - 8*8 = 36 px) are GT band pixels.
    gt = np.zeros((32, 32), np.uint8)
    gt[12:20, 12:20] = IGNORE
    all_zero = np.zeros_like(gt)
    metric = BoundaryIoU(2)
    inter, union = metric.update(t(all_zero), t(gt))
    assert (int(inter[0]), int(union[0])) == (124, 124 + 36)  # prediction's band: the frame only
    # Predicting class 1 on the ignored square: class 0's predicted band now has the ring too;
    # class 1's band lies wholly on ignored pixels, so class 1 stays undefined.
    pred = all_zero.copy()
    pred[12:20, 12:20] = 1
    metric = BoundaryIoU(2)
    inter, union = metric.update(t(pred), t(gt))
    assert inter.tolist() == [160, 0] and union.tolist() == [160, 0]
    result = metric.compute()
    assert result["BoundaryIoU"][0] == 1.0 and math.isnan(result["BoundaryIoU"][1])
    assert result["mBoundaryIoU"] == 1.0


def test_present_class_with_bands_on_ignored_pixels_counts_as_zero():
    # The one class rule (metrics.class_scores): class 1 is predicted on 100 valid pixels, so it is
    # present (IoU 0 in the confusion matrix) and counts in mBoundaryIoU with 0, though its band (the
    # square's 1-px ring, d = 1) lies wholly on ignored pixels. Class 2 is absent: NaN, left out.
    gt = np.zeros((32, 32), np.uint8)
    gt[10:22, 10:22] = IGNORE
    gt[11:21, 11:21] = 0
    pred = np.zeros_like(gt)
    pred[10:22, 10:22] = 1
    metric, cm = BoundaryIoU(3), ConfusionMatrix(3)
    inter, union = metric.update(t(pred), t(gt))
    cm.update(t(pred), t(gt))
    assert int(union[1]) == 0 and int(union[2]) == 0
    result, scores = metric.compute(), cm.compute()
    assert result["BoundaryIoU"][1] == 0.0 and math.isnan(result["BoundaryIoU"][2])
    assert scores["IoU"][1] == 0.0 and math.isnan(scores["IoU"][2])
    assert result["mBoundaryIoU"] == pytest.approx(result["BoundaryIoU"][0] / 2)
    assert 0 < result["BoundaryIoU"][0] < 1


def test_random_maps_with_ignore_match_reference_and_stream():
    rng = np.random.default_rng(2)
    metric = BoundaryIoU(5, ratio=0.05)
    total_inter, total_union = np.zeros(5, np.int64), np.zeros(5, np.int64)
    for h, w in [(40, 56), (33, 33), (64, 20)]:  # different sizes -> different d per image
        target = with_ignore(rng, blobs(rng, h, w, 5))
        pred = noisy_prediction(rng, target, 5)
        inter, union = metric.update(t(pred), t(target))
        want_inter, want_union = ref_band_counts(pred, target, 5, ratio=0.05)
        assert np.array_equal(inter.numpy(), want_inter) and np.array_equal(union.numpy(), want_union)
        total_inter += want_inter
        total_union += want_union
    assert np.array_equal(metric.intersection.numpy(), total_inter)
    assert np.array_equal(metric.union.numpy(), total_union)
    result = metric.compute()
    want = [i / u if u else math.nan for i, u in zip(total_inter, total_union)]
    np.testing.assert_allclose(result["BoundaryIoU"], want, rtol=1e-12)
    assert result["mBoundaryIoU"] == pytest.approx(np.nanmean(want), rel=1e-12)
    assert 0.1 < result["mBoundaryIoU"] < 0.95  # a real mix of hits and misses


def test_rejects_bad_labels():
    metric = BoundaryIoU(3)
    with pytest.raises(ValueError, match="pred labels"):
        metric.update(torch.full((4, 4), 3), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target labels"):
        metric.update(torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 7))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="ratio"):
        BoundaryIoU(3, ratio=0.0)


# ---------------------------------------------------------------- trimap


def test_trimap_matches_opencv_dilations():
    rng = np.random.default_rng(3)
    metric = TrimapAccuracy(4)
    correct, total = np.zeros(40, np.int64), np.zeros(40, np.int64)
    for h, w in [(48, 64), (30, 90)]:
        target = with_ignore(rng, blobs(rng, h, w, 4))
        pred = noisy_prediction(rng, target, 4)
        metric.update(t(pred), t(target))
        c, n = ref_trimap_counts(pred, target)
        correct += c
        total += n
    result = metric.compute()
    assert result["widths"] == list(range(1, 41))
    np.testing.assert_allclose(result["accuracy"], correct / total, rtol=1e-12)
    assert result["accuracy"][0] < result["accuracy"][-1]  # errors concentrate at boundaries


def test_boundary_distance_against_distance_transform():
    rng = np.random.default_rng(4)
    target = with_ignore(rng, blobs(rng, 50, 70, 3))
    dist = boundary_distance(t(target), IGNORE, max_width=40).numpy().astype(int)
    _, n = ref_trimap_counts(target, target)  # band sizes
    valid = target != IGNORE
    for width in (1, 5, 40):
        assert int(((dist <= width) & valid).sum()) == n[width - 1]
    # Chessboard distance transform to the boundary pixels (cv2.DIST_C) agrees pixel by pixel.
    edge = (dist == 0).astype(np.uint8)
    chess = cv2.distanceTransform(1 - edge, cv2.DIST_C, 3)
    assert np.array_equal(np.minimum(chess, 41).astype(int), dist)


def test_trimap_uniform_target_has_no_band():
    metric = TrimapAccuracy(3)
    metric.update(torch.ones(16, 16, dtype=torch.long), torch.ones(16, 16, dtype=torch.long))
    assert all(math.isnan(a) for a in metric.compute()["accuracy"])
    assert int(metric.total.sum()) == 0


# ---------------------------------------------------------------- distributed + summary


def _rank_data(rank: int):
    rng = np.random.default_rng(10 + rank)
    target = with_ignore(rng, blobs(rng, 40, 48, 4))
    return noisy_prediction(rng, target, 4), target


def _reduce_on_rank(rank: int, out_dir: str) -> None:
    pred, target = _rank_data(rank)
    boundary, trimap = BoundaryIoU(4), TrimapAccuracy(4)
    boundary.update(t(pred), t(target))
    trimap.update(t(pred), t(target))
    boundary.all_reduce()
    trimap.all_reduce()
    torch.save(
        {
            "inter": boundary.intersection,
            "union": boundary.union,
            "present": boundary.present,
            "correct": trimap.correct,
            "total": trimap.total,
        },
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.slow
def test_all_reduce_across_two_gloo_processes(tmp_path, gloo_group):
    gloo_group(_reduce_on_rank, 2, str(tmp_path))
    inter, union = np.zeros(4, np.int64), np.zeros(4, np.int64)
    correct, total = np.zeros(40, np.int64), np.zeros(40, np.int64)
    present = np.zeros(4, np.int64)  # non-ignored GT + predicted pixels per class
    for rank in range(2):
        pred, target = _rank_data(rank)
        valid = target != IGNORE
        present += np.bincount(np.concatenate([target[valid], pred[valid]]), minlength=4)
        i, u = ref_band_counts(pred, target, 4)
        c, n = ref_trimap_counts(pred, target)
        inter, union, correct, total = inter + i, union + u, correct + c, total + n
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert np.array_equal(got["inter"].numpy(), inter) and np.array_equal(got["union"].numpy(), union)
        assert np.array_equal(got["present"].numpy(), present)
        # Cumulated distance histograms give the per-width band counts.
        assert np.array_equal(got["total"].cumsum(0)[1:].numpy(), total)
        assert np.array_equal(got["correct"].cumsum(0)[1:].numpy(), correct)


def test_summarize_adds_boundary_trimap_and_colors():
    rng = np.random.default_rng(5)
    target = with_ignore(rng, blobs(rng, 40, 40, 3))
    pred = noisy_prediction(rng, target, 3)
    cm, boundary, trimap = ConfusionMatrix(3), BoundaryIoU(3), TrimapAccuracy(3)
    for metric in (cm, boundary, trimap):
        metric.update(t(pred), t(target))
    palette = [(0, 0, 0), (10, 20, 30), (255, 0, 7)]
    summary = summarize(
        cm.compute(), ["a", "b", "c"], boundary=boundary.compute(), trimap=trimap.compute(), palette=palette
    )
    json.dumps(summary, allow_nan=False)
    assert summary["boundary_ratio"] == 0.02
    inter, union = ref_band_counts(pred, target, 3)
    biou = [i / u if u else None for i, u in zip(inter, union)]
    assert [c["boundary_iou"] for c in summary["per_class"]] == pytest.approx(biou)
    assert summary["mBoundaryIoU"] == pytest.approx(np.mean([b for b in biou if b is not None]))
    assert [c["color"] for c in summary["per_class"]] == [list(c) for c in palette]
    assert summary["trimap"]["widths"] == list(range(1, 41)) and len(summary["trimap"]["accuracy"]) == 40


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_counts_equal_the_reference():
    rng = np.random.default_rng(6)
    target = with_ignore(rng, blobs(rng, 72, 96, 5))
    pred = noisy_prediction(rng, target, 5)
    boundary, trimap = BoundaryIoU(5, device="cuda"), TrimapAccuracy(5, device="cuda")
    boundary.update(t(pred).cuda(), t(target).cuda())
    trimap.update(t(pred).cuda(), t(target).cuda())
    inter, union = ref_band_counts(pred, target, 5)
    correct, total = ref_trimap_counts(pred, target)
    assert boundary.intersection.is_cuda
    assert np.array_equal(boundary.intersection.cpu().numpy(), inter)
    assert np.array_equal(boundary.union.cpu().numpy(), union)
    assert np.array_equal(trimap.total.cumsum(0)[1:].cpu().numpy(), total)
    assert np.array_equal(trimap.correct.cumsum(0)[1:].cpu().numpy(), correct)
