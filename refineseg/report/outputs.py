"""Reading what ``refineseg evaluate`` and ``refineseg train`` saved, for the report pages.

An evaluate folder holds ``metrics.json``, ``per_image.csv`` and ``predictions/<name>.png``; the
images and ground-truth masks are read again from the dataset named in ``metrics.json["config"]``.
A training run folder holds ``metrics.jsonl``, ``config.yaml`` and ``last_validation.json``
(written by :func:`refineseg.report.write_training_report`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refineseg.data.io import read_mask
from refineseg.errors import DataError, RefineSegError, file_error
from refineseg.report.figures import Color
from refineseg.report.html import fraction
from refineseg.utils.palette import color_palette

PER_IMAGE_COLUMNS = ("index", "name", "pixel_accuracy", "miou", "boundary_iou")


def read_json(path: Path) -> Any:
    """A JSON file's content; DataError naming the file when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise file_error(DataError, path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise file_error(DataError, path, f"cannot read JSON ({e})") from None


def read_per_image(path: Path) -> list[dict[str, Any]]:
    """Rows of ``per_image.csv``: index (int), name, and pixel_accuracy / miou / boundary_iou (float or None)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PER_IMAGE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise file_error(DataError, path, f"missing column(s) {', '.join(missing)}")
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    index = int(row["index"])
                except (TypeError, ValueError):
                    raise file_error(
                        DataError, path, f"line {line}: index {row['index']!r} is not an integer"
                    ) from None
                rows.append(
                    {"index": index, "name": row["name"], **{key: fraction(row[key]) for key in PER_IMAGE_COLUMNS[2:]}}
                )
            return rows
    except FileNotFoundError:
        raise file_error(DataError, path, "file not found") from None


def class_colors(metrics: dict[str, Any]) -> list[Color]:
    """Class colours: metrics.json's ``palette``, else the per-class ``color``s, else the VOC colour map."""
    count = len(metrics.get("per_class") or metrics.get("class_names") or [])
    palette = metrics.get("palette")
    if palette and len(palette) >= count:
        return [tuple(int(v) for v in c[:3]) for c in palette]
    colors = [c.get("color") for c in metrics.get("per_class", [])]
    if colors and all(colors):
        return [tuple(int(v) for v in c[:3]) for c in colors]
    return list(color_palette(count))


def class_names(metrics: dict[str, Any]) -> list[str]:
    per_class = metrics.get("per_class", [])
    return [str(n) for n in metrics.get("class_names") or [c.get("name", i) for i, c in enumerate(per_class)]]


@dataclass
class EvalOutputs:
    """One evaluate output folder, loaded: its metrics, per-image rows and where its predictions are."""

    folder: Path
    metrics: dict[str, Any]
    per_image: list[dict[str, Any]]

    @property
    def names(self) -> list[str]:
        return class_names(self.metrics)

    @property
    def colors(self) -> list[Color]:
        return class_colors(self.metrics)

    @property
    def ignore_index(self) -> int:
        return int(self.metrics.get("ignore_index", 255))

    def prediction(self, name: str) -> np.ndarray:
        """The saved (H, W) uint8 prediction of image ``name``."""
        return read_mask(self.folder / "predictions" / f"{name}.png")


def is_eval_folder(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and (folder / "per_image.csv").is_file()


def is_training_folder(folder: Path) -> bool:
    return (folder / "metrics.jsonl").is_file()


def load_eval(folder: str | os.PathLike) -> EvalOutputs:
    """Read ``metrics.json`` and ``per_image.csv`` of an evaluate output folder (DataError if absent)."""
    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    if not isinstance(metrics, dict) or "per_class" not in metrics:
        raise file_error(DataError, folder / "metrics.json", "not a refineseg evaluate metrics.json (no per_class)")
    return EvalOutputs(folder, metrics, read_per_image(folder / "per_image.csv"))


def open_dataset(metrics: dict[str, Any]) -> Any:
    """The evaluated dataset, rebuilt from ``metrics["config"]`` without a transform (raw images and masks)."""
    from refineseg.data import build_dataset  # the data package imports heavier modules; only needed for panels

    config = metrics.get("config") or {}
    name = config.get("dataset") or metrics.get("dataset")
    if not name:
        raise DataError("metrics.json names no dataset to read the images from")
    extra = {"binary_masks": bool(config.get("binary_masks"))}
    return build_dataset(
        name,
        config.get("data_root"),
        config.get("split") or metrics.get("split", "val"),
        None,
        synthetic_samples=config.get("synthetic_val"),
        synthetic_size=config.get("synthetic_size", 128),
        **extra,
    )


def _resize(array: np.ndarray, height: int, width: int, labels: bool) -> np.ndarray:
    picture = Image.fromarray(np.ascontiguousarray(array))
    method = Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR
    return np.asarray(picture.resize((width, height), method))


def load_sample(dataset: Any, index: int, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) and ground truth (H, W) of sample ``index``, at the prediction's size.

    Predictions are saved at the evaluated size, which differs from the file's with ``--resize``.
    """
    if not 0 <= index < len(dataset):
        raise DataError(f"image index {index} is out of range for the {len(dataset)} images of the dataset")
    image, mask = dataset.load_sample(index)
    h, w = prediction.shape[:2]
    if mask.shape[:2] != (h, w):
        image, mask = _resize(image, h, w, labels=False), _resize(mask, h, w, labels=True)
    return image, mask


def missing_predictions(run: EvalOutputs) -> str:
    """Why the predictions of ``run`` cannot be shown ("" when its ``predictions/`` folder exists)."""
    if (run.folder / "predictions").is_dir():
        return ""
    return f"{run.folder / 'predictions'} is missing; evaluate with --report or --save-predictions to keep them"


def try_open_dataset(metrics: dict[str, Any]) -> tuple[Any, str]:
    """(dataset, "") or (None, why not): a report without image panels beats no report."""
    try:
        return open_dataset(metrics), ""
    except (RefineSegError, OSError, ValueError, TypeError) as e:
        return None, f"the dataset could not be read ({e})"


def read_training(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """``metrics.jsonl`` records, ``config.yaml`` (or {}) and ``last_validation.json`` (or None) of a run."""
    records = []
    path = folder / "metrics.jsonl"
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a killed run: skip it
                    continue
    except FileNotFoundError:
        raise file_error(DataError, path, "file not found") from None
    config: dict[str, Any] = {}
    if (folder / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            config = {}
    validation = read_json(folder / "last_validation.json") if (folder / "last_validation.json").is_file() else None
    return records, config, validation
