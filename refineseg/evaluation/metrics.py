"""Segmentation metrics: a streaming confusion matrix and the scores derived from it.

Everything (pixel accuracy, per-class recall, IoU, Dice, F-score) is computed from one C x C
matrix, so evaluation only has to accumulate integer counts batch by batch, and
distributed evaluation only has to sum those counts across ranks. The boundary metrics
(:mod:`refineseg.evaluation.boundary`) stream the same way; :func:`summarize` merges both into the JSON form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


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
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._mat, op=torch.distributed.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Scores as Python floats in [0, 1].

        Returns ``aAcc`` (overall pixel accuracy), ``mAcc`` (mean per-class recall), ``mIoU``, ``mDice``,
        ``fwIoU``, ``mFscore`` and per-class lists ``IoU``, ``Acc``, ``Dice``, ``Fscore``, ``PixelShare``.
        A class absent from both ground truth and prediction gets NaN and is left out of the means; a
        class with predictions but no ground truth gets IoU/Dice 0 (counted) and Acc NaN (recall is
        undefined without ground-truth pixels).

        ``fwIoU`` = sum over classes of ``PixelShare`` (the class's fraction of the ground-truth
        pixels) x IoU. ``Fscore`` is mmsegmentation's: 2PR / (P + R) with precision P = TP / predicted
        and recall R = TP / ground truth, NaN when it is 0/0, i.e. for every class with TP = 0 (even
        one present in the ground truth); ``mFscore`` is its nan-mean, as mmseg reports it.
        """
        mat = self._mat.detach().to("cpu", torch.float64)
        tp = mat.diagonal()
        gt = mat.sum(dim=1)
        pr = mat.sum(dim=0)
        union = gt + pr - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        dice = torch.where(gt + pr > 0, 2 * tp / (gt + pr).clamp(min=1), nan)
        total = float(mat.sum())
        share = gt / total if total > 0 else torch.full_like(gt, float("nan"))
        precision, recall = tp / pr, tp / gt  # NaN for 0/0, as mmseg
        fscore = 2 * precision * recall / (precision + recall)  # NaN when TP = 0
        fwiou = float((share * iou.nan_to_num(0.0)).sum()) if total > 0 else float("nan")
        return {
            "aAcc": float(tp.sum()) / total if total > 0 else float("nan"),
            "mAcc": _nanmean(acc),
            "mIoU": _nanmean(iou),
            "mDice": _nanmean(dice),
            "fwIoU": fwiou,
            "mFscore": _nanmean(fscore),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
            "Dice": dice.tolist(),
            "Fscore": fscore.tolist(),
            "PixelShare": share.tolist(),
        }


def _nanmean(x: Tensor) -> float:
    """Mean over the non-NaN entries of a 1-D tensor; NaN if there are none (no warning)."""
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() > 0 else float("nan")


def _json_float(x: float | None) -> float | None:
    """NaN (undefined score) -> None, so the result serializes to valid JSON (``null``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(x)


def summarize(metrics: dict[str, Any], class_names: list[str], boundary: dict[str, Any] | None = None,
              trimap: dict[str, Any] | None = None,
              palette: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
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
    summary: dict[str, Any] = {key: _json_float(metrics[key])
                               for key in ("aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore")}
    per_class = []
    for i, name in enumerate(class_names):
        entry = {"name": str(name), "IoU": _json_float(metrics["IoU"][i]), "Acc": _json_float(metrics["Acc"][i]),
                 "fscore": _json_float(metrics["Fscore"][i]), "pixel_share": _json_float(metrics["PixelShare"][i])}
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
        summary["trimap"] = {"widths": [int(w) for w in trimap["widths"]],
                             "accuracy": [_json_float(a) for a in trimap["accuracy"]]}
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
    keys = [k for k in ("aAcc", "mAcc", "mIoU", "mDice", "fwIoU", "mFscore", "mBoundaryIoU") if k in summary
            or k in ("aAcc", "mAcc", "mIoU", "mDice")]
    lines.append("  ".join(f"{key}: {_pct(summary.get(key))}" for key in keys))
    return "\n".join(lines)
