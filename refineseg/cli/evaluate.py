"""``refineseg evaluate``: mIoU, boundary quality and friends of a checkpoint on a dataset split.

Loads a checkpoint (or an ONNX file), builds the dataset, runs
:func:`~refineseg.evaluation.evaluate_model` and writes ``metrics.json``, ``per_image.csv``,
``confusion_matrix.png`` and optionally ``predictions/<name>.png`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refineseg.cli.common import dataclass_command
from refineseg.data import DATASETS, build_dataset, eval_transform
from refineseg.data.check import check_before_run
from refineseg.errors import CheckpointError, MissingDependencyError, file_error
from refineseg.evaluation.evaluate import evaluate_model, match_classes, write_per_image_csv
from refineseg.evaluation.metrics import format_table
from refineseg.inference.options import InferenceOptions
from refineseg.inference.predict import load_predictor
from refineseg.report import write_eval_report
from refineseg.report.visualize import plot_confusion_matrix
from refineseg.utils import distributed
from refineseg.utils.config import build_config, option, required
from refineseg.utils.device import model_device
from refineseg.utils.files import write_text


@dataclass(kw_only=True)
class EvalConfig(InferenceOptions):
    """Everything ``refineseg evaluate`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required("checkpoint directory written by save_pretrained (e.g. runs/train/best)")
    dataset: str = required("dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    split: str = option("val", "split to evaluate")
    backend: str = option(
        "torch",
        "inference engine; onnxruntime runs a file from `refineseg export` (fp32 or --int8) given as --checkpoint",
        choices=["torch", "onnxruntime"],
    )
    out: str = option("runs/eval", "output directory for metrics.json and confusion_matrix.png")
    scales: list[float] = option([0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "image scales for multiscale inference")
    flip: bool = option(True, "also average horizontally flipped passes (multiscale only)")
    resize: int | None = option(
        None,
        "resize the shorter image side to this before inference; metrics are computed at that size (default: as is)",
    )
    confusion_png: bool = option(True, "write confusion_matrix.png")
    save_predictions: bool = option(
        False,
        "also write OUT/predictions/<name>.png, the predicted label map "
        "of every image (palette PNG at the evaluated resolution)",
    )
    report: bool = option(
        False,
        "write OUT/report.html, one self-contained page (scores, per-class table, "
        "confusion matrix, trimap, worst and best images); implies --save-predictions",
    )
    boundary_ratio: float = option(
        0.02, "Boundary IoU band width as a fraction of the image diagonal (at least 1 px), as in Cheng et al. 2021"
    )
    synthetic_val: int = option(64, "synthetic dataset: number of images")
    synthetic_size: int = option(128, "synthetic dataset: image side")
    binary_masks: bool = option(
        False,
        "folder dataset: masks are 0/255 background/foreground "
        "(0 -> 0; 1 and 128..255 -> 1), as `binary: true` in classes.yaml",
    )
    workers: int = option(0, "data-loading worker processes")
    skip_data_check: bool = option(False, "start without checking every image and mask of the split first")
    class_map: str | None = option(
        None,
        "YAML file matching the checkpoint's classes to the dataset's when their "
        "names or order differ: a mapping `checkpoint name: dataset name` "
        "(unlisted names stay as they are) or a list of dataset class names, one "
        "per checkpoint class in the checkpoint's order",
    )
    ignore_class_names: bool = option(
        False,
        "evaluate even though the checkpoint's class names differ from the "
        "dataset's, taking class i of the checkpoint as class i of the dataset",
    )

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
        if self.class_map is not None and self.ignore_class_names:
            raise ValueError("give class_map or ignore_class_names, not both")


def load_for_evaluation(config: EvalConfig) -> tuple[Any, Any, torch.device, Any, list[int] | None]:
    """The model, what runs it (the same object: fast-path model or ONNX session), its device, the dataset
    and the class order.

    Raises CheckpointError when the checkpoint and the dataset have different numbers of classes,
    or different class names without ``--class-map`` / ``--ignore-class-names`` (:func:`match_classes`).
    """
    runner = load_predictor(config)  # the fast-path model, or an ONNX session (logits on the CPU)
    model, device = runner, model_device(runner)
    transform = eval_transform(model.config.mean, model.config.std, resize=config.resize)
    dataset = build_dataset(
        config.dataset,
        config.data_root,
        config.split,
        transform,
        synthetic_samples=config.synthetic_val,
        synthetic_size=config.synthetic_size,
        binary_masks=config.binary_masks,
    )
    if dataset.num_classes != model.config.num_classes:
        raise file_error(
            CheckpointError,
            config.checkpoint,
            f"model has {model.config.num_classes} classes but the {config.dataset} dataset has {dataset.num_classes}",
        )
    order = match_classes(
        model.config.class_names, dataset.class_names, config.checkpoint, config.class_map, config.ignore_class_names
    )
    return model, runner, device, dataset, order


def run_evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.checkpoint`` on ``config.dataset``; write metrics.json and per_image.csv
    (+ confusion PNG, predictions/<name>.png with --save-predictions, report.html with --report).

    Returns the summary dict written to metrics.json.
    """
    model, runner, device, dataset, order = load_for_evaluation(config)
    check_before_run([dataset], skip=config.skip_data_check)  # every bad file at once, before any image
    out = Path(config.out)
    save_predictions = config.save_predictions or config.report
    # The checkpoint's colours; with a class map, each moved to the dataset class its class became.
    palette = [list(model.config.palette[order.index(j) if order else j]) for j in range(dataset.num_classes)]
    summary, matrix = evaluate_model(
        runner,
        dataset,
        **config.inference_kwargs(),
        device=device,
        workers=config.workers,
        boundary_ratio=config.boundary_ratio,
        per_image=True,
        predictions_dir=out / "predictions" if save_predictions else None,
        palette=palette,
        class_map=order,
    )
    rows = summary.pop("per_image")
    summary.update(
        mode=config.mode,
        checkpoint=str(config.checkpoint),
        dataset=config.dataset,
        split=config.split,
        num_images=len(dataset),
        confusion_matrix=matrix.tolist(),
        class_names=list(dataset.class_names),
        palette=palette,
        ignore_index=dataset.ignore_index,
    )
    if distributed.rank() == 0:
        write_outputs(config, summary, rows, matrix, dataset)
    return summary


def write_outputs(
    config: EvalConfig, summary: dict[str, Any], rows: list[dict[str, Any]], matrix: np.ndarray, dataset: Any
) -> None:
    """metrics.json, per_image.csv, the console table, confusion_matrix.png and report.html (rank 0)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    write_text(metrics_path, json.dumps({**summary, "config": asdict(config)}, indent=2) + "\n")  # atomic
    per_image_path = write_per_image_csv(out / "per_image.csv", rows)
    print(format_table(summary))
    print(f"Metrics: {metrics_path}")
    print(f"Per-image scores: {per_image_path}")
    if config.save_predictions or config.report:
        print(f"Predictions: {out / 'predictions'}")
    if config.confusion_png:
        try:
            png = plot_confusion_matrix(matrix, dataset.class_names, out / "confusion_matrix.png")  # atomic
            print(f"Confusion matrix: {png}")
        except MissingDependencyError as e:
            print(f"Skipped confusion_matrix.png: {e}")
    if config.report:  # rebuilt from the files just written, as `refineseg report OUT` does
        print(f"Report: {write_eval_report(out, dataset=dataset)}")


def _run(args: argparse.Namespace) -> None:
    run_evaluate(build_config(EvalConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(sub, "evaluate", "measure mIoU and friends of a checkpoint on a dataset split", EvalConfig, _run)
