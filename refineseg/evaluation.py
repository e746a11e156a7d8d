"""Evaluate a saved model on a labelled dataset: confusion matrix, mIoU and friends, plots.

:func:`evaluate_model` is the loop (also used by the trainer for validation, across DDP ranks);
:func:`run_evaluate` is what ``refineseg evaluate`` runs: load a checkpoint, build the dataset,
evaluate, write ``metrics.json`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .models import from_pretrained
from .config_utils import option, required
from .data import DATASETS, build_dataset, eval_transform
from .data.check import check_before_run
from .errors import CheckpointError, MissingDependencyError, file_error
from .files import write_text
from .inference import InferenceOptions, check_inference_options, predict_probabilities, select_device
from .metrics import ConfusionMatrix, format_table, summarize
from .visualize import plot_confusion_matrix


@dataclass(kw_only=True)
class EvalConfig(InferenceOptions):
    """Everything ``refineseg evaluate`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required("checkpoint directory written by save_pretrained (e.g. runs/train/best)")
    dataset: str = required("dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    split: str = option("val", "split to evaluate")
    out: str = option("runs/eval", "output directory for metrics.json and confusion_matrix.png")
    scales: list[float] = option([0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "image scales for multiscale inference")
    flip: bool = option(True, "also average horizontally flipped passes (multiscale only)")
    resize: int | None = option(None, "resize the shorter image side to this before inference; "
                                    "metrics are computed at that size (default: as is)")
    confusion_png: bool = option(True, "write confusion_matrix.png")
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
) -> tuple[dict[str, Any], np.ndarray]:
    """Score ``model`` on a dataset yielding normalized (3, H, W) images and (H, W) int masks.

    Images go through one at a time (sizes may differ). Under torch.distributed, rank r evaluates
    samples r, r + world_size, ... and the confusion matrices are summed over ranks, so every rank
    returns the same result. Pass the bare model, not a DDP wrapper. The model's train/eval mode is
    restored afterwards.

    Returns ``(summarize(...) dict, (C, C) int64 confusion matrix)`` with C = ``dataset.num_classes``,
    rows = ground truth.
    """
    check_inference_options(mode, crop, stride, scales)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = distributed.rank(), distributed.world_size()
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=workers)
    matrix = ConfusionMatrix(dataset.num_classes, getattr(dataset, "ignore_index", 255), device=device)

    was_training = model.training
    model.eval()
    # disable=None: no bar when stderr is not a terminal (logs, captured output).
    bar = tqdm(loader, desc="evaluate", unit="img", disable=True if not progress or rank != 0 else None)
    try:
        with torch.inference_mode(), bar:
            for image, mask in bar:
                probs = predict_probabilities(model, image.to(device), mode=mode, crop=crop, stride=stride,
                                              scales=scales, flip=flip)
                matrix.update(probs.argmax(1), mask.to(device))
    finally:
        model.train(was_training)
    matrix.all_reduce()
    summary = summarize(matrix.compute(), list(dataset.class_names))
    return summary, matrix.matrix.cpu().numpy().astype(np.int64)


def run_evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.checkpoint`` on ``config.dataset``; write metrics.json (+ confusion PNG).

    Returns the summary dict written to metrics.json. Raises CheckpointError when the checkpoint
    and the dataset have different numbers of classes.
    """
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
    summary, matrix = evaluate_model(runner, dataset, **config.inference_kwargs(), device=device,
                                     workers=config.workers)
    summary.update(mode=config.mode, checkpoint=str(config.checkpoint), dataset=config.dataset,
                   split=config.split, num_images=len(dataset))
    if rank != 0:
        return summary

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    write_text(metrics_path, json.dumps({**summary, "config": asdict(config)}, indent=2) + "\n")  # atomic
    print(format_table(summary))
    print(f"Metrics: {metrics_path}")
    if config.confusion_png:
        try:
            png = plot_confusion_matrix(matrix, dataset.class_names, out / "confusion_matrix.png")  # atomic
            print(f"Confusion matrix: {png}")
        except MissingDependencyError as e:
            print(f"Skipped confusion_matrix.png: {e}")
    return summary
