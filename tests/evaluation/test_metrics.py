"""ConfusionMatrix and summaries checked against an independent numpy computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from refineseg.evaluation.metrics import ConfusionMatrix, format_table, summarize

IGNORE = 255


def random_labels(seed: int, shape: tuple[int, ...], num_classes: int, ignore_frac: float = 0.1):
    """Random (pred, target) int64 tensors; ~ignore_frac of the targets are IGNORE."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    # Make predictions agree with the target most of the time so scores are not all ~1/C.
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, torch.randint(0, num_classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < ignore_frac] = IGNORE
    return pred, target


def reference_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Per-class loops over boolean masks; no confusion matrix involved."""
    valid = target != IGNORE
    p, t = pred[valid], target[valid]
    iou, acc, dice = [], [], []
    for c in range(num_classes):
        in_gt, in_pr = t == c, p == c
        inter = np.logical_and(in_gt, in_pr).sum()
        union = np.logical_or(in_gt, in_pr).sum()
        iou.append(inter / union if union else math.nan)
        acc.append(inter / in_gt.sum() if in_gt.sum() else (0.0 if union else math.nan))
        dice.append(2 * inter / (in_gt.sum() + in_pr.sum()) if union else math.nan)

    def nanmean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs) if xs else math.nan

    return {
        "aAcc": (p == t).mean(),
        "mAcc": nanmean(acc),
        "mIoU": nanmean(iou),
        "mDice": nanmean(dice),
        "IoU": iou,
        "Acc": acc,
        "Dice": dice,
    }


def assert_metrics_close(got: dict, want: dict) -> None:
    for key in ("aAcc", "mAcc", "mIoU", "mDice"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    for key in ("IoU", "Acc", "Dice"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=key)


def test_matches_numpy_reference_with_ignore_pixels():
    pred, target = random_labels(0, (3, 37, 41), num_classes=6)
    cm = ConfusionMatrix(6)
    cm.update(pred, target)
    got = cm.compute()
    assert_metrics_close(got, reference_metrics(pred.numpy(), target.numpy(), 6))
    assert all(isinstance(got[k], float) for k in ("aAcc", "mAcc", "mIoU", "mDice"))
    assert 0.5 < got["aAcc"] < 0.8  # 60% copied + 1/6 of the rest
    # Ignored pixels are not counted at all.
    assert int(cm.matrix.sum()) == int((target != IGNORE).sum())
    assert cm.matrix.dtype == torch.int64 and cm.matrix.shape == (6, 6)


def test_matrix_orientation_rows_are_ground_truth():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[1, 1, 2]]), torch.tensor([[0, 1, 255]]))
    expected = torch.tensor([[0, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert torch.equal(cm.matrix, expected)


def test_absent_classes_are_nan_and_excluded_but_zero_scores_count():
    # Class 0: perfect. Class 1: in GT, never predicted (IoU 0, counts). Class 2: predicted only
    # (IoU 0 and Acc 0, counted). Class 3: absent everywhere (NaN, excluded).
    target = torch.tensor([0, 0, 1, 1, 0])
    pred = torch.tensor([0, 0, 0, 0, 2])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    assert m["IoU"][:3] == pytest.approx([2 / 5, 0.0, 0.0])
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Dice"][3])
    assert m["Acc"][:3] == pytest.approx([2 / 3, 0.0, 0.0])
    assert math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx((2 / 5) / 3)
    assert m["mAcc"] == pytest.approx((2 / 3) / 3)
    assert m["mDice"] == pytest.approx((2 * 2 / (3 + 4)) / 3)
    assert m["aAcc"] == pytest.approx(2 / 5)
    assert_metrics_close(m, reference_metrics(pred.numpy(), target.numpy(), 4))


def test_streaming_updates_equal_one_big_update():
    pred, target = random_labels(1, (8, 16, 16), num_classes=5)
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    streamed = ConfusionMatrix(5)
    streamed.update(pred[:3], target[:3])  # uneven (N, H, W) batches ...
    streamed.update(pred[3:6], target[3:6])
    for p, t in zip(pred[6:], target[6:]):  # ... and single (H, W) maps
        streamed.update(p, t)
    assert torch.equal(streamed.matrix, whole.matrix)
    assert streamed.compute() == whole.compute()


def test_reset_and_empty():
    cm = ConfusionMatrix(3)
    m = cm.compute()
    assert math.isnan(m["aAcc"]) and math.isnan(m["mIoU"])
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.compute()["mIoU"] == 1.0
    cm.reset()
    assert int(cm.matrix.sum()) == 0
    cm.update(torch.tensor([255]), torch.tensor([255]))  # only ignored pixels: nothing to count
    assert int(cm.matrix.sum()) == 0


def test_rejects_bad_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target labels"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="pred labels"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_all_reduce_is_noop_without_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _reduce_on_rank(rank: int, out_dir: str) -> None:
    pred, target = random_labels(100 + rank, (2, 24, 24), num_classes=5)
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    cm.all_reduce()
    torch.save(cm.matrix, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_all_reduce_across_two_gloo_processes(tmp_path, gloo_group):
    gloo_group(_reduce_on_rank, 2, str(tmp_path))

    datasets = [random_labels(100 + rank, (2, 24, 24), num_classes=5) for rank in range(2)]
    pred = torch.cat([p for p, _ in datasets])
    target = torch.cat([t for _, t in datasets])
    single = ConfusionMatrix(5)
    single.update(pred, target)
    assert not torch.equal(datasets[0][1], datasets[1][1])  # ranks really saw different data
    for rank in range(2):
        reduced = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(reduced, single.matrix)


def test_summarize_is_json_ready_and_table_lists_every_class():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))  # class 2 absent -> NaN
    summary = summarize(cm.compute(), ["background", "cat", "dog"])
    assert set(summary) == {"aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore", "per_class"}
    assert [c["name"] for c in summary["per_class"]] == ["background", "cat", "dog"]
    assert summary["per_class"][1]["IoU"] == pytest.approx(2 / 3)
    assert summary["per_class"][1]["pixel_share"] == pytest.approx(3 / 4)
    assert summary["per_class"][2] == {"name": "dog", "IoU": None, "Acc": None, "fscore": None, "pixel_share": 0.0}
    text = json.dumps(summary, allow_nan=False)  # raises if any NaN slipped through
    assert json.loads(text)["aAcc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="class names"):
        summarize(cm.compute(), ["a", "b"])

    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["Class", "IoU", "%", "Acc", "%"]
    cat = next(line for line in lines if line.startswith("cat"))
    assert cat.split() == ["cat", "66.67", "66.67"]
    dog = next(line for line in lines if line.startswith("dog"))
    assert dog.split() == ["dog", "-", "-"]
    assert "aAcc: 75.00" in lines[-1] and "mIoU: " in lines[-1]


def test_fwiou_and_mfscore_match_numpy_from_the_matrix():
    # Rows = ground truth. Class 2: in GT, never predicted (TP 0); class 3: predicted, not in GT;
    # class 4: absent everywhere.
    mat = np.array([[50, 3, 0, 2, 0], [4, 30, 0, 1, 0], [6, 2, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.int64)
    target = np.repeat(np.arange(5), mat.sum(1))
    pred = np.concatenate([np.repeat(np.arange(5), row) for row in mat])
    cm = ConfusionMatrix(5)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert np.array_equal(cm.matrix.numpy(), mat)
    got = cm.compute()

    tp, gt, pr = np.diag(mat).astype(float), mat.sum(1).astype(float), mat.sum(0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pr - tp)
        freq = gt / gt.sum()
    want = numpy_scores(mat)
    assert got["fwIoU"] == pytest.approx(np.nansum(freq * iou), rel=1e-12)
    assert got["fwIoU"] == pytest.approx((55 / 98) * (50 / 65) + (35 / 98) * (30 / 40), rel=1e-12)
    np.testing.assert_allclose(got["Fscore"], want["Fscore"], rtol=1e-12, equal_nan=True)
    assert got["Fscore"][2:4] == [0.0, 0.0] and math.isnan(got["Fscore"][4])  # TP = 0 but present: 0
    assert got["mFscore"] == pytest.approx(want["mFscore"], rel=1e-12)
    np.testing.assert_allclose(got["PixelShare"], freq, rtol=1e-12)

    summary = summarize(got, [f"c{i}" for i in range(5)])
    assert summary["fwIoU"] == pytest.approx(got["fwIoU"]) and summary["mFscore"] == pytest.approx(got["mFscore"])
    assert [c["fscore"] for c in summary["per_class"]][2:] == [0.0, 0.0, None]
    assert sum(c["pixel_share"] for c in summary["per_class"]) == pytest.approx(1.0)


def test_update_returns_the_batch_counts():
    pred, target = random_labels(7, (2, 9, 11), num_classes=4)
    cm = ConfusionMatrix(4)
    cm.update(pred[0], target[0])
    counts = cm.update(pred[1], target[1])
    single = ConfusionMatrix(4)
    single.update(pred[1], target[1])
    assert torch.equal(counts, single.matrix)
    assert torch.equal(cm.update(torch.tensor([1]), torch.tensor([IGNORE])), torch.zeros(4, 4, dtype=torch.int64))


def numpy_scores(mat: np.ndarray) -> dict:
    """The class rule written out independently: per-class scores and means from a raw (C, C) matrix.

    A class with no ground-truth and no predicted pixel is undefined (NaN) and left out of the means;
    every other class counts, its score 0 where the ratio is 0/0.
    """
    mat = np.asarray(mat, dtype=np.float64)
    c = len(mat)
    scores = {key: [math.nan] * c for key in ("IoU", "Acc", "Dice", "Precision", "Fscore")}
    for k in range(c):
        tp, in_gt, in_pred = mat[k, k], mat[k, :].sum(), mat[:, k].sum()
        if in_gt + in_pred == 0:
            continue
        recall = tp / in_gt if in_gt else 0.0
        precision = tp / in_pred if in_pred else 0.0
        scores["IoU"][k] = tp / (in_gt + in_pred - tp)
        scores["Acc"][k] = recall
        scores["Dice"][k] = 2 * tp / (in_gt + in_pred)
        scores["Precision"][k] = precision
        scores["Fscore"][k] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = dict(scores)
    for key, mean in (
        ("IoU", "mIoU"),
        ("Acc", "mAcc"),
        ("Dice", "mDice"),
        ("Precision", "mPrecision"),
        ("Fscore", "mFscore"),
    ):
        defined = [x for x in scores[key] if not math.isnan(x)]
        out[mean] = sum(defined) / len(defined) if defined else math.nan
    return out


def matrix_to_labels(mat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) pixel lists whose confusion matrix is ``mat`` (rows = ground truth)."""
    target = np.repeat(np.arange(len(mat)), mat.sum(1))
    pred = np.concatenate([np.repeat(np.arange(len(mat)), row) for row in mat])
    return torch.from_numpy(pred), torch.from_numpy(target)


MEAN_KEYS = ("mIoU", "mAcc", "mDice", "mPrecision", "mFscore")


def assert_rule(got: dict, mat: np.ndarray) -> None:
    want = numpy_scores(mat)
    for key in MEAN_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    for key in ("IoU", "Acc", "Dice", "Precision", "Fscore"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=key)
    # One rule: every mean counts the same classes, so no mean can hide a class another counts.
    counted = [
        {i for i, x in enumerate(got[key]) if not math.isnan(x)}
        for key in ("IoU", "Acc", "Dice", "Precision", "Fscore")
    ]
    present = set(np.flatnonzero(mat.sum(0) + mat.sum(1)).tolist())
    assert all(c == present for c in counted)
    assert got["mFscore"] == pytest.approx(got["mDice"], rel=1e-12)  # F1 = Dice per class


def test_all_background_prediction_every_mean_counts_the_missed_classes():
    # Issue 20.3: a model that predicts only background reported mFscore 84 beside mIoU 12.
    gt_pixels = [800, 50, 40, 60, 30, 20, 0]  # class 6: absent everywhere
    mat = np.zeros((7, 7), np.int64)
    mat[:, 0] = gt_pixels
    cm = ConfusionMatrix(7)
    cm.update(*matrix_to_labels(mat))
    assert np.array_equal(cm.matrix.numpy(), mat)
    got = cm.compute()
    assert_rule(got, mat)
    assert got["mIoU"] == pytest.approx(0.8 / 6) and got["mAcc"] == pytest.approx(1 / 6)
    assert got["mFscore"] == pytest.approx((2 * 0.8 / 1.8) / 6)  # not 0.889 (background alone)
    assert got["mPrecision"] == pytest.approx(0.8 / 6)

    summary = summarize(got, [f"c{i}" for i in range(7)])
    for key in ("mIoU", "mAcc", "mDice", "mFscore"):
        assert summary[key] == pytest.approx(got[key])
    assert [c["fscore"] for c in summary["per_class"]][1:] == [0.0] * 5 + [None]
    table = format_table(summary).splitlines()[-1]
    assert f"mFscore: {100 * got['mFscore']:.2f}" in table and f"mIoU: {100 * got['mIoU']:.2f}" in table


def test_random_matrix_follows_the_rule():
    rng = np.random.default_rng(20)
    mat = rng.integers(0, 50, (8, 8)) * (rng.random((8, 8)) < 0.5)
    mat[5, :] = 0  # never in the ground truth, but predicted
    mat[:, 6] = 0  # in the ground truth, never predicted
    mat[6, 2] = 9
    mat[7, :], mat[:, 7] = 0, 0  # absent everywhere
    assert mat[:, 5].sum() > 0 and mat[6].sum() > 0
    cm = ConfusionMatrix(8)
    cm.update(*matrix_to_labels(mat))
    got = cm.compute()
    assert_rule(got, mat)
    assert got["Acc"][5] == 0.0 and got["Precision"][6] == 0.0 and math.isnan(got["IoU"][7])
