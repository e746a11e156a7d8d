"""Evaluation: confusion-matrix metrics (IoU, Dice, F-score, fwIoU), boundary quality (Boundary IoU,
trimap accuracy) and the loop that scores a model on a dataset."""

from refineseg.evaluation.boundary import BoundaryIoU, TrimapAccuracy
from refineseg.evaluation.evaluate import evaluate_model
from refineseg.evaluation.metrics import ConfusionMatrix, format_table, summarize

__all__ = ["ConfusionMatrix", "summarize", "format_table", "BoundaryIoU", "TrimapAccuracy", "evaluate_model"]
