"""Evaluate a saved model on a labelled dataset: confusion matrix, mIoU and friends, plots.

:func:`evaluate_model` is the loop (also used by the trainer for validation, across DDP ranks);
:func:`match_classes` lines a checkpoint's classes up with a dataset's; :func:`write_per_image_csv`
writes the per-image scores. ``refineseg evaluate`` (:mod:`refineseg.cli.evaluate`) puts them together.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refineseg.data import write_label_png
from refineseg.errors import CheckpointError, ConfigError, file_error
from refineseg.evaluation.boundary import BoundaryIoU, TrimapAccuracy
from refineseg.evaluation.metrics import ConfusionMatrix, class_scores, nanmean, summarize
from refineseg.inference.predictor import check_inference_options, predict_probabilities
from refineseg.utils import distributed
from refineseg.utils.config import read_yaml
from refineseg.utils.device import model_device
from refineseg.utils.files import write_text
from refineseg.utils.palette import color_palette
from refineseg.utils.progress import progress as show_progress

log = logging.getLogger(__name__)


#: Columns of per_image.csv.
PER_IMAGE_COLUMNS = ("index", "name", "pixel_accuracy", "miou", "boundary_iou")


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    mode: str = "whole",
    crop: int = 512,
    stride: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    workers: int = 0,
    boundary_ratio: float | None = 0.02,
    per_image: bool = False,
    predictions_dir: str | Path | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    class_map: Sequence[int] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Score ``model`` on a dataset yielding normalized (3, H, W) images and (H, W) int masks.

    Images go through one at a time (sizes may differ). Under torch.distributed, rank r evaluates
    samples r, r + world_size, ... and the counts (confusion matrix, boundary and trimap counts)
    are summed over ranks, so every rank returns the same result. Pass the bare model, not a DDP
    wrapper. The model's train/eval mode is restored afterwards.

    ``boundary_ratio`` adds Boundary IoU and trimap accuracy (:mod:`refineseg.evaluation.boundary`); None
    skips them. ``per_image`` adds ``summary["per_image"]``: one dict per image (the keys of
    :data:`PER_IMAGE_COLUMNS`, None when undefined), gathered from all ranks, sorted by index.
    ``predictions_dir`` receives ``<sample name>.png``, the argmax label map of each image the rank
    evaluates, drawn with ``palette`` (default: the dataset's), which also gives the per-class colours.
    ``class_map`` (see :func:`match_classes`) gives the dataset class of each model output class; the
    predictions are relabelled with it before they are scored or saved.

    Returns ``(summarize(...) dict, (C, C) int64 confusion matrix)`` with C = ``dataset.num_classes``,
    rows = ground truth.
    """
    check_inference_options(mode, crop, stride, scales)
    device = torch.device(device) if device is not None else model_device(model)
    palette = list(palette or getattr(dataset, "palette", None) or color_palette(dataset.num_classes))
    relabel = torch.as_tensor(class_map, dtype=torch.int64, device=device) if class_map is not None else None
    counters = _Counters(dataset.num_classes, getattr(dataset, "ignore_index", 255), boundary_ratio, device)

    def predict_labels(image: torch.Tensor) -> torch.Tensor:  # (1, 3, H, W) -> (1, H, W) dataset classes
        probs = predict_probabilities(
            model, image.to(device), mode=mode, crop=crop, stride=stride, scales=scales, flip=flip
        )
        return probs.argmax(1) if relabel is None else relabel[probs.argmax(1)]

    with _eval_mode(model):
        rows = _score_images(
            predict_labels, dataset, counters, palette, per_image, predictions_dir, progress=progress, workers=workers
        )
    summary = counters.summary(list(dataset.class_names), palette)
    if per_image:
        summary["per_image"] = _gather_rows(rows)
    return summary, counters.matrix.matrix.cpu().numpy().astype(np.int64)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, then back in the mode it was in (also when an error ends the block)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _score_images(
    predict_labels: Callable[[torch.Tensor], torch.Tensor],
    dataset: Any,
    counters: _Counters,
    palette: list[Sequence[int]],
    per_image: bool,
    predictions_dir: str | Path | None,
    *,
    progress: bool,
    workers: int,
) -> list[dict[str, Any]]:
    """Predict this rank's share of ``dataset`` one image at a time and add each to ``counters``.

    Under torch.distributed rank r takes samples r, r + world_size, ... . ``predict_labels`` maps a
    (1, 3, H, W) image to (1, H, W) labels. Each prediction is saved into ``predictions_dir``
    (drawn with ``palette``) when given. Returns the per-image rows (:func:`_image_row`) when
    ``per_image``, else []. The progress bar shows on rank 0 only.
    """
    rank, world = distributed.rank(), distributed.world_size()
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=workers
    )
    rows: list[dict[str, Any]] = []
    # A bar on a terminal, else a line with the ETA every few seconds (rank 0 only).
    batches = show_progress(loader, "evaluate", total=len(indices)) if progress and rank == 0 else loader
    with torch.inference_mode():
        for index, (image, mask) in zip(indices, batches):
            pred = predict_labels(image)
            counts, band_counts = counters.update(pred, mask.to(counters.device))
            name = dataset.sample_name(index) if hasattr(dataset, "sample_name") else f"{index:06d}"
            if per_image:
                rows.append(_image_row(index, name, counts, band_counts))
            if predictions_dir is not None:
                label_map = pred[0].to("cpu", torch.uint8).numpy()
                write_label_png(Path(predictions_dir) / f"{name}.png", label_map, palette)  # atomic
    return rows


class _Counters:
    """What an evaluation accumulates: the confusion matrix and, unless ``boundary_ratio`` is None,
    the Boundary IoU and trimap counts."""

    def __init__(self, num_classes: int, ignore_index: int, boundary_ratio: float | None, device: torch.device) -> None:
        self.device = device  # where the counts live, and the masks are compared with the predictions
        self.matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
        self.boundary = self.trimap = None
        if boundary_ratio is not None:
            self.boundary = BoundaryIoU(num_classes, ignore_index, boundary_ratio, device=device)
            self.trimap = TrimapAccuracy(num_classes, ignore_index, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Add one image; its (C, C) confusion counts and per-class band (intersection, union) or None."""
        counts = self.matrix.update(pred, target)
        if self.boundary is None:
            return counts, None
        self.trimap.update(pred, target)
        return counts, self.boundary.update(pred, target)

    def summary(self, class_names: list[str], palette: list[Sequence[int]]) -> dict[str, Any]:
        """The counts summed over all ranks (every rank calls this), then :func:`summarize`."""
        self.matrix.all_reduce()
        if self.boundary is not None:
            self.boundary.all_reduce()
            self.trimap.all_reduce()
        return summarize(
            self.matrix.compute(),
            class_names,
            palette=palette,
            boundary=self.boundary.compute() if self.boundary is not None else None,
            trimap=self.trimap.compute() if self.trimap is not None else None,
        )


def _image_row(
    index: int, name: str, counts: torch.Tensor, band_counts: tuple[torch.Tensor, torch.Tensor] | None
) -> dict[str, Any]:
    """Scores of one image from its (C, C) confusion counts and per-class band (intersection, union).

    Pixel accuracy over the non-ignored pixels; mIoU and boundary IoU averaged over the classes
    present in the image's ground truth or prediction, the rule of
    :func:`refineseg.evaluation.metrics.class_scores` (a present class whose bands lie wholly on
    ignored pixels scores 0).
    """
    counts = counts.to("cpu", torch.float64)
    tp, gt, pr = counts.diagonal(), counts.sum(1), counts.sum(0)
    present, total = (gt + pr) > 0, float(gt.sum())

    def undefined_to_none(x: float) -> float | None:
        return None if np.isnan(x) else x

    row = {
        "index": int(index),
        "name": str(name),
        "pixel_accuracy": float(tp.sum()) / total if total > 0 else None,
        "miou": undefined_to_none(nanmean(class_scores(tp, gt + pr - tp, present))),
        "boundary_iou": None,
    }
    if band_counts is not None:
        row["boundary_iou"] = undefined_to_none(nanmean(class_scores(*band_counts, present)))
    return row


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image rows of all ranks (each evaluated disjoint images), sorted by dataset index."""
    if distributed.world_size() > 1:
        parts: list[Any] = [None] * distributed.world_size()
        torch.distributed.all_gather_object(parts, rows)
        rows = [row for part in parts for row in part]
    return sorted(rows, key=lambda row: row["index"])


def write_per_image_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write per-image rows as CSV (header :data:`PER_IMAGE_COLUMNS`, scores as fractions, empty = undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for row in rows:
        scores = ["" if row[key] is None else f"{row[key]:.6f}" for key in PER_IMAGE_COLUMNS[2:]]
        writer.writerow([row["index"], row["name"], *scores])
    write_text(path, buffer.getvalue())  # atomic
    return Path(path)


def match_classes(
    model_names: Sequence[str],
    dataset_names: Sequence[str],
    checkpoint: str | Path,
    class_map: str | Path | None = None,
    ignore_names: bool = False,
) -> list[int] | None:
    """The dataset class index of each of the model's classes; None when class i is class i as it is.

    Equal name lists need nothing, nor do the placeholders ``class_0, class_1, ...`` of a checkpoint
    saved without names (e.g. converted published weights). Otherwise ``class_map`` (a YAML file,
    :func:`read_class_map`) says which is which, ``ignore_names`` takes them in order as they are,
    and without either a one-line :class:`CheckpointError` names the first class whose names differ.
    """
    model_names, dataset_names = [str(n) for n in model_names], [str(n) for n in dataset_names]
    if class_map is not None:
        order = read_class_map(class_map, model_names, dataset_names)
        return None if order == list(range(len(order))) else order
    if model_names in (dataset_names, [f"class_{i}" for i in range(len(model_names))]):
        return None
    i = next(i for i, (a, b) in enumerate(zip(model_names, dataset_names)) if a != b)
    if ignore_names:
        log.warning(
            "evaluating under the dataset's class names: class %d is %r in the checkpoint but %r in the "
            "dataset (--ignore-class-names)",
            i,
            model_names[i],
            dataset_names[i],
        )
        return None
    how = " (the same names in another order)" if sorted(model_names) == sorted(dataset_names) else ""
    raise file_error(
        CheckpointError,
        checkpoint,
        f"class {i} is {model_names[i]!r} in the checkpoint but {dataset_names[i]!r} in the dataset"
        f"{how}; pass --class-map FILE to match them or --ignore-class-names to evaluate it as is",
    )


def read_class_map(path: str | Path, model_names: Sequence[str], dataset_names: Sequence[str]) -> list[int]:
    """The dataset index of each model class from a class-map YAML file (one-line ConfigError if it is wrong).

    The file holds a mapping ``checkpoint class name: dataset class name`` (names it leaves out map
    to themselves) or a list of dataset class names, one per checkpoint class in the checkpoint's
    order. Every dataset class must be matched exactly once.
    """
    data = read_yaml(path, "class map")
    if isinstance(data, dict):
        mapping = {str(k): str(v) for k, v in data.items()}
        unknown = [k for k in mapping if k not in model_names]
        if unknown:
            raise file_error(
                ConfigError, path, f"{unknown[0]!r} is not a class of the checkpoint ({', '.join(model_names)})"
            )
        targets = [mapping.get(name, name) for name in model_names]
    elif isinstance(data, list) and len(data) == len(model_names):
        targets = [str(v) for v in data]
    else:
        raise file_error(
            ConfigError,
            path,
            f"expected a mapping `checkpoint class: dataset class` or a list of "
            f"{len(model_names)} dataset class names, got {type(data).__name__}"
            + (f" of {len(data)}" if isinstance(data, list) else ""),
        )
    for i, name in enumerate(targets):
        if name not in dataset_names:
            raise file_error(
                ConfigError,
                path,
                f"checkpoint class {model_names[i]!r} maps to {name!r}, not a "
                f"class of the dataset ({', '.join(dataset_names)})",
            )
        if name in targets[:i]:
            raise file_error(
                ConfigError,
                path,
                f"checkpoint classes {model_names[targets.index(name)]!r} and {model_names[i]!r} both map to {name!r}",
            )
    return [list(dataset_names).index(name) for name in targets]
