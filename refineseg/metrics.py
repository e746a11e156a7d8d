"""Segmentation metrics: a streaming confusion matrix and the scores derived from it.

Everything (pixel accuracy, per-class recall, IoU, Dice) is computed from one C x C
matrix, so evaluation only has to accumulate integer counts batch by batch, and
distributed evaluation only has to sum those counts across ranks.
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
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch. ``pred`` and ``target`` are integer label maps of the same shape, (N, H, W) or (H, W).

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
        pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        c = self.num_classes
        if int(target.min()) < 0 or int(target.max()) >= c:
            raise ValueError(f"target labels must be in [0, {c}) or {self.ignore_index}, "
                             f"got range [{int(target.min())}, {int(target.max())}]")
        if int(pred.min()) < 0 or int(pred.max()) >= c:
            raise ValueError(f"pred labels must be in [0, {c}), got range [{int(pred.min())}, {int(pred.max())}]")
        counts = torch.bincount(target * c + pred, minlength=c * c)
        self._mat += counts.reshape(c, c)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks in place when torch.distributed is initialized; no-op otherwise.

        The matrix must live on a device the backend supports (CPU for gloo, CUDA for NCCL).
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._mat, op=torch.distributed.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Scores as Python floats in [0, 1].

        Returns ``aAcc`` (overall pixel accuracy), ``mAcc`` (mean per-class recall), ``mIoU``, ``mDice``
        and per-class lists ``IoU``, ``Acc``, ``Dice``. A class absent from both ground truth and
        prediction gets NaN and is left out of the means; a class with predictions but no ground truth
        gets IoU/Dice 0 (counted) and Acc NaN (recall is undefined without ground-truth pixels).
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
        return {
            "aAcc": float(tp.sum()) / total if total > 0 else float("nan"),
            "mAcc": _nanmean(acc),
            "mIoU": _nanmean(iou),
            "mDice": _nanmean(dice),
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
            "Dice": dice.tolist(),
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


def summarize(metrics: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """Turn ``ConfusionMatrix.compute()`` output into the JSON-ready form written by evaluation.

    Returns ``{"aAcc", "mAcc", "mIoU", "mDice", "per_class": [{"name", "IoU", "Acc"}, ...]}``
    with NaN replaced by None.
    """
    n = len(metrics["IoU"])
    if len(class_names) != n:
        raise ValueError(f"got {len(class_names)} class names for {n} classes")
    return {
        "aAcc": _json_float(metrics["aAcc"]),
        "mAcc": _json_float(metrics["mAcc"]),
        "mIoU": _json_float(metrics["mIoU"]),
        "mDice": _json_float(metrics["mDice"]),
        "per_class": [
            {"name": str(name), "IoU": _json_float(iou), "Acc": _json_float(acc)}
            for name, iou, acc in zip(class_names, metrics["IoU"], metrics["Acc"])
        ],
    }


def _pct(x: float | None) -> str:
    """0.1234 -> '12.34'; undefined (None/NaN) -> '-'."""
    x = _json_float(x)
    return "-" if x is None else f"{100.0 * x:.2f}"


def format_table(summary: dict[str, Any]) -> str:
    """Printable per-class table (name, IoU %, Acc %) followed by one line with the overall scores."""
    rows = [(c["name"], _pct(c["IoU"]), _pct(c["Acc"])) for c in summary["per_class"]]
    header = ("Class", "IoU %", "Acc %")
    w0 = max([len(header[0])] + [len(r[0]) for r in rows])
    w1 = max([len(header[1])] + [len(r[1]) for r in rows])
    w2 = max([len(header[2])] + [len(r[2]) for r in rows])
    lines = [f"{header[0]:<{w0}}  {header[1]:>{w1}}  {header[2]:>{w2}}", "-" * (w0 + w1 + w2 + 4)]
    lines += [f"{name:<{w0}}  {iou:>{w1}}  {acc:>{w2}}" for name, iou, acc in rows]
    lines.append("-" * (w0 + w1 + w2 + 4))
    lines.append("  ".join(f"{key}: {_pct(summary.get(key))}" for key in ("aAcc", "mAcc", "mIoU", "mDice")))
    return "\n".join(lines)
