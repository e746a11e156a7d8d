"""Segment image files with a saved model: label PNGs and colour overlays.

:func:`run_predict` is what ``refineseg predict`` runs. For every input image it writes
``OUT/<stem>.png``, a palette PNG of class indices (viewers show the class colours, readers get
the indices back), and, optionally, ``OUT/<stem>_overlay.png``, the photo with the coloured
labels blended over it and a legend of the classes present.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .models import from_pretrained
from .data import IMAGE_SUFFIXES, TIFF_SUFFIXES, read_image, read_large_image, write_label_png, write_label_tiff
from .errors import DataError, file_error
from .config_utils import option, required
from .inference import InferenceOptions, segment, select_device
from .tiling import predict_tiled
from .visualize import overlay


@dataclass(kw_only=True)
class PredictConfig(InferenceOptions):
    """Everything ``refineseg predict`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required("checkpoint directory written by save_pretrained (e.g. runs/train/best), "
                               "or an .onnx file with --backend onnxruntime")
    inputs: list[str] = required("image files, folders (their images, not recursive) or glob patterns")
    out: str = option("runs/predict", "output directory for label PNGs and overlays")
    tile: int | None = option(None, "tiled mode for images of any size: tile side in pixels (e.g. 1024); "
                                    "memory is bounded by the tile, not the image")
    overlap: int = option(128, "tiled mode: overlap between neighbouring tiles, blended smoothly")
    overlay: bool = option(True, "also write <stem>_overlay.png (photo + colours + legend)")
    alpha: float = option(0.5, "overlay opacity of the label colours, 0..1")
    backend: str = option("torch", "inference engine; onnxruntime runs a file from `refineseg export`",
                          choices=["torch", "onnxruntime"])

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        super().__post_init__()
        if self.tile is not None and not 0 <= self.overlap < self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def _is_image(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Turn files, folders and glob patterns into a list of image paths.

    Files are kept as given (whatever their suffix: reading them reports non-images); folders give
    their image files, sorted, not recursive; patterns go through ``glob.glob(recursive=True)``
    and keep the image files they match. Duplicates are dropped, first occurrence kept. Raises
    DataError for an input that matches no image, or when there are no inputs at all.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            matches = sorted(os.path.join(item, n) for n in os.listdir(item))
            matches = [m for m in matches if _is_image(m)]
            if not matches:
                raise file_error(DataError, item, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif os.path.isfile(item):
            matches = [item]
        elif any(c in item for c in "*?["):
            matches = [m for m in sorted(glob.glob(item, recursive=True)) if _is_image(m)]
            if not matches:
                raise file_error(DataError, item, "pattern matches no image files")
        else:
            raise file_error(DataError, item, "file not found")
        for match in matches:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                found.append(Path(match))
    if not found:
        raise DataError("no input images given")
    return found


def _output_name(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_1``, ``stem_2`` ... so neither <name>.png nor <name>_overlay.png is taken."""
    name, k = stem, 0
    while f"{name}.png" in taken or f"{name}_overlay.png" in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.update({f"{name}.png", f"{name}_overlay.png"})
    return name


def load_predictor(config: PredictConfig):
    """A callable ``(N, 3, H, W) -> logits`` with ``.config``: a (fast-path) model or an ONNX session."""
    if config.backend == "onnxruntime":
        from .export import OnnxSegmenter

        return OnnxSegmenter(config.checkpoint)
    return config.prepare(from_pretrained(config.checkpoint, map_location=select_device(config.device)))


PREVIEW_SIDE = 4096  # overlays of tiled predictions are drawn at most this large


def _predict_large(model, path: Path, out: Path, name: str, config: PredictConfig) -> Path:
    """Tiled prediction of one (possibly huge) image; TIFF inputs give TIFF label maps.

    The image is read with the decompression-bomb limit lifted (TIFFs memory-mapped when
    uncompressed); the overlay is drawn on a preview no larger than ``PREVIEW_SIDE``.
    """
    image = read_large_image(path)
    labels = predict_tiled(model, image, tile=config.tile, overlap=config.overlap)
    palette = model.config.palette
    if path.suffix.lower() in TIFF_SUFFIXES:
        label_path = out / f"{name}.tif"
        write_label_tiff(label_path, labels, palette)
    else:
        label_path = out / f"{name}.png"
        write_label_png(label_path, labels, palette)
    if config.overlay:
        step = max(1, -(-max(labels.shape) // PREVIEW_SIDE))
        overlay(np.asarray(image[::step, ::step]), labels[::step, ::step], palette, model.config.class_names,
                alpha=config.alpha).save(out / f"{name}_overlay.png")
    return label_path


def run_predict(config: PredictConfig) -> list[Path]:
    """Segment every input image; write OUT/<stem>.png (+ OUT/<stem>_overlay.png).

    Returns the label PNG paths in input order. An unreadable input raises DataError naming it.
    """
    paths = expand_inputs(config.inputs)
    model = load_predictor(config)
    palette, names = model.config.palette, model.config.class_names
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    # Never overwrite an input that happens to live in the output folder.
    taken = {p.name for p in paths if os.path.realpath(p.parent) == os.path.realpath(out)}

    written = []
    # disable=None: no bar when stderr is not a terminal; closing it on errors keeps them on their own line.
    with tqdm(paths, desc="predict", unit="img", disable=None) as bar:
        for path in bar:
            name = _output_name(path.stem, taken)
            if config.tile:
                label_path = _predict_large(model, path, out, name, config)
            else:
                image = read_image(path)
                labels = segment(model, image, **config.inference_kwargs())
                label_path = out / f"{name}.png"
                write_label_png(label_path, labels, palette)
                if config.overlay:
                    overlay(image, labels, palette, names, alpha=config.alpha).save(out / f"{name}_overlay.png")
            written.append(label_path)
    what = "label PNGs and overlays" if config.overlay else "label PNGs"
    print(f"Wrote {len(written)} {what} to {out}")
    return written
