"""Evaluate a saved model on a labelled dataset: confusion matrix, mIoU and friends, plots.

:func:`evaluate_model` is the loop (also used by the trainer for validation, across DDP ranks);
:func:`run_evaluate` is what ``refineseg evaluate`` runs: load a checkpoint, build the dataset,
evaluate, write ``metrics.json``, ``per_image.csv``, ``confusion_matrix.png`` and optionally
``predictions/<name>.png``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from refineseg.data import DATASETS, build_dataset, eval_transform, write_label_png
from refineseg.data.check import check_before_run
from refineseg.errors import CheckpointError, MissingDependencyError, file_error
from refineseg.evaluation.boundary import BoundaryIoU, TrimapAccuracy, nanmean, ratios
from refineseg.evaluation.metrics import ConfusionMatrix, format_table, summarize
from refineseg.inference.options import InferenceOptions
from refineseg.inference.predictor import check_inference_options, predict_probabilities
from refineseg.models import from_pretrained
from refineseg.report import write_eval_report
from refineseg.report.visualize import plot_confusion_matrix
from refineseg.utils import distributed
from refineseg.utils.config import option, required
from refineseg.utils.device import model_device, select_device
from refineseg.utils.files import write_text
from refineseg.utils.palette import color_palette


@dataclass(kw_only=True)
class EvalConfig(InferenceOptions):
    """Everything ``refineseg evaluate`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required("checkpoint directory written by save_pretrained (e.g. runs/train/best)")
    dataset: str = required("dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    split: str = option("val", "split to evaluate")
    backend: str = option("torch", "inference engine; onnxruntime runs a file from `refineseg export` "
                                   "(fp32 or --int8) given as --checkpoint", choices=["torch", "onnxruntime"])
    out: str = option("runs/eval", "output directory for metrics.json and confusion_matrix.png")
    scales: list[float] = option([0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "image scales for multiscale inference")
    flip: bool = option(True, "also average horizontally flipped passes (multiscale only)")
    resize: int | None = option(None, "resize the shorter image side to this before inference; "
                                    "metrics are computed at that size (default: as is)")
    confusion_png: bool = option(True, "write confusion_matrix.png")
    save_predictions: bool = option(False, "also write OUT/predictions/<name>.png, the predicted label map "
                                           "of every image (palette PNG at the evaluated resolution)")
    report: bool = option(False, "write OUT/report.html, one self-contained page (scores, per-class table, "
                                 "confusion matrix, trimap, worst and best images); implies --save-predictions")
    boundary_ratio: float = option(0.02, "Boundary IoU band width as a fraction of the image diagonal "
                                         "(at least 1 px), as in Cheng et al. 2021")
    synthetic_val: int = option(64, "synthetic dataset: number of images")
    synthetic_size: int = option(128, "synthetic dataset: image side")
    binary_masks: bool = option(False, "folder dataset: masks are 0/255 background/foreground "
                                       "(0 -> 0; 1 and 128..255 -> 1), as `binary: true` in classes.yaml")
    workers: int = option(0, "data-loading worker processes")
    skip_data_check: bool = option(False, "start without checking every image and mask of the split first")

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.binary_masks and self.dataset != "folder":
            raise ValueError(f"binary_masks is for --dataset folder, not {self.dataset}")
        super().__post_init__()
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be >= 1, got {self.resize}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0 < self.boundary_ratio <= 1:
            raise ValueError(f"boundary_ratio must be in (0, 1], got {self.boundary_ratio}")


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

    Returns ``(summarize(...) dict, (C, C) int64 confusion matrix)`` with C = ``dataset.num_classes``,
    rows = ground truth.
    """
    check_inference_options(mode, crop, stride, scales)
    device = torch.device(device) if device is not None else model_device(model)
    rank, world = distributed.rank(), distributed.world_size()
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=workers)
    num_classes, ignore_index = dataset.num_classes, getattr(dataset, "ignore_index", 255)
    palette = list(palette or getattr(dataset, "palette", None) or color_palette(num_classes))
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    boundary = trimap = None
    if boundary_ratio is not None:
        boundary = BoundaryIoU(num_classes, ignore_index, boundary_ratio, device=device)
        trimap = TrimapAccuracy(num_classes, ignore_index, device=device)
    rows: list[dict[str, Any]] = []

    was_training = model.training
    model.eval()
    # disable=None: no bar when stderr is not a terminal (logs, captured output).
    bar = tqdm(loader, desc="evaluate", unit="img", disable=True if not progress or rank != 0 else None)
    try:
        with torch.inference_mode(), bar:
            for index, (image, mask) in zip(indices, bar):
                probs = predict_probabilities(model, image.to(device), mode=mode, crop=crop, stride=stride,
                                              scales=scales, flip=flip)
                pred, target = probs.argmax(1), mask.to(device)
                counts = matrix.update(pred, target)
                band_counts = None
                if boundary is not None:
                    band_counts = boundary.update(pred, target)
                    trimap.update(pred, target)
                name = dataset.sample_name(index) if hasattr(dataset, "sample_name") else f"{index:06d}"
                if per_image:
                    rows.append(_image_row(index, name, counts, band_counts))
                if predictions_dir is not None:
                    write_label_png(Path(predictions_dir) / f"{name}.png", pred[0].to("cpu", torch.uint8).numpy(),
                                    palette)  # atomic
    finally:
        model.train(was_training)
    matrix.all_reduce()
    if boundary is not None:
        boundary.all_reduce()
        trimap.all_reduce()
    summary = summarize(matrix.compute(), list(dataset.class_names),
                        boundary=boundary.compute() if boundary is not None else None,
                        trimap=trimap.compute() if trimap is not None else None, palette=palette)
    if per_image:
        summary["per_image"] = _gather_rows(rows)
    return summary, matrix.matrix.cpu().numpy().astype(np.int64)


def _image_row(index: int, name: str, counts: torch.Tensor,
               band_counts: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, Any]:
    """Scores of one image from its (C, C) confusion counts and per-class band (intersection, union).

    Pixel accuracy over the non-ignored pixels; mIoU over the classes present in its ground truth
    or prediction (union > 0); boundary IoU averaged over the classes whose bands are non-empty
    (the same classes unless a predicted class's band lies wholly on ignored pixels).
    """
    counts = counts.to("cpu", torch.float64)
    tp, gt, pr = counts.diagonal(), counts.sum(1), counts.sum(0)
    total = float(gt.sum())

    def undefined_to_none(x: float) -> float | None:
        return None if np.isnan(x) else x

    row = {"index": int(index), "name": str(name),
           "pixel_accuracy": float(tp.sum()) / total if total > 0 else None,
           "miou": undefined_to_none(nanmean(ratios(tp, gt + pr - tp))),
           "boundary_iou": None}
    if band_counts is not None:
        row["boundary_iou"] = undefined_to_none(nanmean(ratios(*band_counts)))
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


def run_evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.checkpoint`` on ``config.dataset``; write metrics.json and per_image.csv
    (+ confusion PNG, predictions/<name>.png with --save-predictions).

    Returns the summary dict written to metrics.json. Raises CheckpointError when the checkpoint
    and the dataset have different numbers of classes.
    """
    if config.backend == "onnxruntime":  # an .onnx file (config from its metadata); logits come back on the CPU
        from refineseg.inference.export import OnnxSegmenter

        runner = model = OnnxSegmenter(config.checkpoint)
        device = model.device
    else:
        device = select_device(config.device)
        model = from_pretrained(config.checkpoint, map_location=device)
        runner = config.prepare(model)
    transform = eval_transform(model.config.mean, model.config.std, resize=config.resize)
    dataset = build_dataset(config.dataset, config.data_root, config.split, transform,
                            synthetic_samples=config.synthetic_val, synthetic_size=config.synthetic_size,
                            **({"binary_masks": True} if config.binary_masks else {}))
    if dataset.num_classes != model.config.num_classes:
        raise file_error(CheckpointError, config.checkpoint,
                         f"model has {model.config.num_classes} classes but the {config.dataset} dataset "
                         f"has {dataset.num_classes}")
    check_before_run([dataset], skip=config.skip_data_check)  # every bad file at once, before any image

    rank = distributed.rank()
    out = Path(config.out)
    save_predictions = config.save_predictions or config.report
    palette = [list(color) for color in model.config.palette]
    summary, matrix = evaluate_model(runner, dataset, **config.inference_kwargs(), device=device,
                                     workers=config.workers, boundary_ratio=config.boundary_ratio, per_image=True,
                                     predictions_dir=out / "predictions" if save_predictions else None,
                                     palette=palette)
    rows = summary.pop("per_image")
    summary.update(mode=config.mode, checkpoint=str(config.checkpoint), dataset=config.dataset,
                   split=config.split, num_images=len(dataset), confusion_matrix=matrix.tolist(),
                   class_names=list(dataset.class_names), palette=palette, ignore_index=dataset.ignore_index)
    if rank != 0:
        return summary

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    write_text(metrics_path, json.dumps({**summary, "config": asdict(config)}, indent=2) + "\n")  # atomic
    per_image_path = write_per_image_csv(out / "per_image.csv", rows)
    print(format_table(summary))
    print(f"Metrics: {metrics_path}")
    print(f"Per-image scores: {per_image_path}")
    if save_predictions:
        print(f"Predictions: {out / 'predictions'}")
    if config.confusion_png:
        try:
            png = plot_confusion_matrix(matrix, dataset.class_names, out / "confusion_matrix.png")  # atomic
            print(f"Confusion matrix: {png}")
        except MissingDependencyError as e:
            print(f"Skipped confusion_matrix.png: {e}")
    if config.report:  # rebuilt from the files just written, as `refineseg report OUT` does
        print(f"Report: {write_eval_report(out, dataset=dataset)}")
    return summary
