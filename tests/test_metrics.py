"""ConfusionMatrix and summaries checked against an independent numpy computation."""

from __future__ import annotations

import json
import math

import conftest
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
        acc.append(inter / in_gt.sum() if in_gt.sum() else math.nan)
        dice.append(2 * inter / (in_gt.sum() + in_pr.sum()) if union else math.nan)

    def nanmean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs) if xs else math.nan

    return {"aAcc": (p == t).mean(), "mAcc": nanmean(acc), "mIoU": nanmean(iou), "mDice": nanmean(dice),
            "IoU": iou, "Acc": acc, "Dice": dice}


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


def test_absent_classes_are_nan_and_excluded_but_zero_iou_counts():
    # Class 0: perfect. Class 1: in GT, never predicted (IoU 0, counts). Class 2: predicted only
    # (IoU 0, counts; Acc NaN). Class 3: absent everywhere (NaN, excluded).
    target = torch.tensor([0, 0, 1, 1, 0])
    pred = torch.tensor([0, 0, 0, 0, 2])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    assert m["IoU"][:3] == pytest.approx([2 / 5, 0.0, 0.0])
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Dice"][3])
    assert m["Acc"][:2] == pytest.approx([2 / 3, 0.0])
    assert math.isnan(m["Acc"][2]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx((2 / 5) / 3)
    assert m["mAcc"] == pytest.approx((2 / 3) / 2)
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
def test_all_reduce_across_two_gloo_processes(tmp_path):
    conftest.run_gloo_group(_reduce_on_rank, 2, str(tmp_path))

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
    mat = np.array([[50, 3, 0, 2, 0],
                    [4, 30, 0, 1, 0],
                    [6, 2, 0, 0, 0],
                    [0, 0, 0, 0, 0],
                    [0, 0, 0, 0, 0]], np.int64)
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
        precision, recall = tp / pr, tp / gt
        fscore = 2 * precision * recall / (precision + recall)  # mmseg: NaN wherever TP = 0
    assert got["fwIoU"] == pytest.approx(np.nansum(freq * iou), rel=1e-12)
    assert got["fwIoU"] == pytest.approx((55 / 98) * (50 / 65) + (35 / 98) * (30 / 40), rel=1e-12)
    np.testing.assert_allclose(got["Fscore"], fscore, rtol=1e-12, equal_nan=True)
    assert math.isnan(got["Fscore"][2]) and math.isnan(got["Fscore"][3])
    assert got["mFscore"] == pytest.approx(np.nanmean(fscore), rel=1e-12)
    np.testing.assert_allclose(got["PixelShare"], freq, rtol=1e-12)

    summary = summarize(got, [f"c{i}" for i in range(5)])
    assert summary["fwIoU"] == pytest.approx(got["fwIoU"]) and summary["mFscore"] == pytest.approx(got["mFscore"])
    assert [c["fscore"] for c in summary["per_class"]][2:] == [None, None, None]
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
