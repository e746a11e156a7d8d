"""Segmentation metrics: a streaming confusion matrix and the scores derived from it.

Everything (pixel accuracy, per-class recall, IoU, Dice, F-score) is computed from one C x C
matrix, so evaluation only has to accumulate integer counts batch by batch, and
distributed evaluation only has to sum those counts across ranks. The boundary metrics
(:mod:`refineseg.evaluation.boundary`) stream the same way; :func:`summarize` merges both into the JSON form.

**Which classes a mean counts** (one rule for every per-class mean: mIoU, mDice, mFscore, mAcc,
mPrecision, mBoundaryIoU and the per-image mIoU / boundary IoU): a class *present* in the ground
truth or the prediction (on non-ignored pixels) is counted, with score 0 where its ratio is 0/0
(e.g. the precision of a class never predicted, the recall of a class only predicted); a class
absent from both is undefined (NaN, ``null`` in JSON) and left out of every mean. :func:`class_scores`
applies the rule and :func:`nanmean` averages; nothing else decides which classes count.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from refineseg.utils.distributed import all_reduce_sum


class ConfusionMatrix:
    """Streaming C x C confusion matrix (rows = ground truth, columns = prediction).

    Pixels whose target equals ``ignore_index`` are skipped. Counts are int64, so
    billions of pixels can be accumulated without overflow.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)

    @property
    def matrix(self) -> Tensor:
        """The accumulated counts, a (C, C) int64 tensor; ``matrix[t, p]`` = pixels of class t predicted as p."""
        return self._mat

    def reset(self) -> None:
        """Zero the counts (e.g. before a new evaluation pass)."""
        self._mat.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add one batch. ``pred`` and ``target`` are integer label maps of the same shape, (N, H, W) or (H, W).

        Returns the batch's own (C, C) counts (e.g. for per-image scores).

        Raises ``ValueError`` for mismatched shapes or labels outside ``[0, C)`` (other than ignored targets),
        since those would silently land in the wrong cell of the flattened bincount.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer label maps (take argmax of the logits first)")
        pred = pred.reshape(-1).to(self.device, torch.int64)
        target = target.reshape(-1).to(self.device, torch.int64)
        keep = target != self.ignore_index
        c = self.num_classes
        if not bool(keep.any()):
            return torch.zeros(c, c, dtype=torch.int64, device=self.device)
        # Ranges over the kept pixels without boolean indexing (slow on large images).
        low = int(torch.where(keep, target, c).min())
        high = int(torch.where(keep, target, -1).max())
        if low < 0 or high >= c:
            raise ValueError(f"target labels must be in [0, {c}) or {self.ignore_index}, got range [{low}, {high}]")
        low = int(torch.where(keep, pred, c).min())
        high = int(torch.where(keep, pred, -1).max())
        if low < 0 or high >= c:
            raise ValueError(f"pred labels must be in [0, {c}), got range [{low}, {high}]")
        code = torch.where(keep, target * c + pred, c * c)  # ignored pixels: one extra bin, dropped
        counts = torch.bincount(code, minlength=c * c + 1)[:-1].reshape(c, c)
        self._mat += counts
        return counts

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks in place when torch.distributed is initialized; no-op otherwise.

        The matrix must live on a device the backend supports (CPU for gloo, CUDA for NCCL).
        """
        all_reduce_sum(self._mat)

    def compute(self) -> dict[str, Any]:
        """Scores as Python floats in [0, 1].

        Returns ``aAcc`` (overall pixel accuracy), ``mAcc`` (mean per-class recall), ``mIoU``, ``mDice``,
        ``fwIoU``, ``mFscore``, ``mPrecision`` and per-class lists ``IoU``, ``Acc`` (recall), ``Dice``,
        ``Fscore``, ``Precision``, ``PixelShare``. Per-class scores and their means follow the module's
        one rule (:func:`class_scores`): a class absent from both ground truth and prediction is NaN and
        left out of every mean; a class present in either counts, 0 where its ratio is 0/0.

        ``fwIoU`` = sum over classes of ``PixelShare`` (the class's fraction of the ground-truth
        pixels) x IoU. ``Fscore`` = 2PR / (P + R) with precision P = TP / predicted and recall
        R = TP / ground truth; with beta = 1 it equals Dice (2 TP / (predicted + ground truth)).
        Unlike mmsegmentation, whose mFscore skips every class with TP = 0, a class that is in the
        ground truth but never predicted scores 0 here and lowers ``mFscore`` as it lowers ``mIoU``.
        """
        mat = self._mat.detach().to("cpu", torch.float64)
        tp, gt, pr = mat.diagonal(), mat.sum(dim=1), mat.sum(dim=0)
        present = (gt + pr) > 0
        iou = class_scores(tp, gt + pr - tp, present)
        acc = class_scores(tp, gt, present)
        precision = class_scores(tp, pr, present)
        dice = class_scores(2 * tp, gt + pr, present)
        fscore = class_scores(2 * precision * acc, precision + acc, present)
        total = float(mat.sum())
        share = gt / total if total > 0 else torch.full_like(gt, float("nan"))
        fwiou = float((share * iou.nan_to_num(0.0)).sum()) if total > 0 else float("nan")
        return {
            "aAcc": float(tp.sum()) / total if total > 0 else float("nan"),
            "mAcc": nanmean(acc),
            "mIoU": nanmean(iou),
            "mDice": nanmean(dice),
            "fwIoU": fwiou,
            "mFscore": nanmean(fscore),
            "mPrecision": nanmean(precision),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
            "Dice": dice.tolist(),
            "Fscore": fscore.tolist(),
            "Precision": precision.tolist(),
            "PixelShare": share.tolist(),
        }


def class_scores(num: Tensor, den: Tensor, present: Tensor) -> Tensor:
    """Per-class ``num / den`` under the one rule of this module: the only place it is decided.

    ``present`` (bool, C) marks the classes with a non-ignored pixel in the ground truth or the
    prediction. Present classes get ``num / den``, or 0 where ``den`` is 0 (then ``num``, a count of
    true positives, is 0 too); absent classes get NaN, so :func:`nanmean` leaves them out.
    Returns float64 on the CPU.
    """
    num, den = num.detach().to("cpu", torch.float64), den.detach().to("cpu", torch.float64)
    present = present.detach().to("cpu", torch.bool)
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return torch.where(present, ratio, float("nan"))


def nanmean(x: Tensor) -> float:
    """Mean over the non-NaN entries of a 1-D tensor (the defined, i.e. counted, classes); NaN if none."""
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() > 0 else float("nan")


def _json_float(x: float | None) -> float | None:
    """NaN (undefined score) -> None, so the result serializes to valid JSON (``null``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(x)


def summarize(
    metrics: dict[str, Any],
    class_names: list[str],
    boundary: dict[str, Any] | None = None,
    trimap: dict[str, Any] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Turn ``ConfusionMatrix.compute()`` output into the JSON-ready form written by evaluation.

    Returns ``{"aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore", "per_class": [{"name", "IoU",
    "Acc", "fscore", "pixel_share"}, ...]}`` with NaN replaced by None. ``boundary``
    (``BoundaryIoU.compute()``) adds ``mBoundaryIoU``, ``boundary_ratio`` and a per-class
    ``boundary_iou``; ``trimap`` (``TrimapAccuracy.compute()``) adds ``trimap: {"widths",
    "accuracy"}``; ``palette`` adds a per-class ``color`` ([r, g, b]).
    """
    n = len(metrics["IoU"])
    if len(class_names) != n:
        raise ValueError(f"got {len(class_names)} class names for {n} classes")
    for name, values in (("boundary", boundary and boundary["BoundaryIoU"]), ("palette", palette)):
        if values is not None and len(values) != n:
            raise ValueError(f"got {len(values)} {name} entries for {n} classes")
    summary: dict[str, Any] = {
        key: _json_float(metrics[key]) for key in ("aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore")
    }
    per_class = []
    for i, name in enumerate(class_names):
        entry = {
            "name": str(name),
            "IoU": _json_float(metrics["IoU"][i]),
            "Acc": _json_float(metrics["Acc"][i]),
            "fscore": _json_float(metrics["Fscore"][i]),
            "pixel_share": _json_float(metrics["PixelShare"][i]),
        }
        if boundary is not None:
            entry["boundary_iou"] = _json_float(boundary["BoundaryIoU"][i])
        if palette is not None:
            entry["color"] = [int(v) for v in palette[i][:3]]
        per_class.append(entry)
    if boundary is not None:
        summary["mBoundaryIoU"] = _json_float(boundary["mBoundaryIoU"])
        summary["boundary_ratio"] = float(boundary["ratio"])
    summary["per_class"] = per_class
    if trimap is not None:
        summary["trimap"] = {
            "widths": [int(w) for w in trimap["widths"]],
            "accuracy": [_json_float(a) for a in trimap["accuracy"]],
        }
    return summary


def _pct(x: float | None) -> str:
    """0.1234 -> '12.34'; undefined (None/NaN) -> '-'."""
    x = _json_float(x)
    return "-" if x is None else f"{100.0 * x:.2f}"


def format_table(summary: dict[str, Any]) -> str:
    """Printable per-class table (name, IoU %, Acc %, and Boundary IoU % when present) and the overall scores."""
    columns = [("IoU %", "IoU"), ("Acc %", "Acc")]
    if "mBoundaryIoU" in summary:
        columns.append(("BIoU %", "boundary_iou"))
    rows = [[c["name"]] + [_pct(c.get(key)) for _, key in columns] for c in summary["per_class"]]
    header = ["Class"] + [title for title, _ in columns]
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([f"{cells[0]:<{widths[0]}}"] + [f"{v:>{w}}" for v, w in zip(cells[1:], widths[1:])])

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    lines = [line(header), rule] + [line(r) for r in rows] + [rule]
    keys = [
        k
        for k in ("aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore", "mBoundaryIoU")
        if k in summary or k in ("aAcc", "mAcc", "mIoU", "mDice")
    ]
    lines.append("  ".join(f"{key}: {_pct(summary.get(key))}" for key in keys))
    return "\n".join(lines)
