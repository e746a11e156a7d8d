"""Segment image files with a saved model: label PNGs and colour overlays, in batches that finish.

:func:`run_predict` is what ``refineseg predict`` runs. For every input image it writes
``OUT/<stem>.png``, a palette PNG of class indices (viewers show the class colours, readers get
the indices back), and, optionally, ``OUT/<stem>_overlay.png``, the photo with the coloured
labels blended over it and a legend of the classes present.

A bad input (corrupt, truncated, not an image, out of memory) is reported on stderr as
``error: <file>: <cause>`` and skipped; the rest are processed. The run ends with a summary line
(``N written, M failed``), the failures are listed in ``OUT/errors.txt`` (``<input>: <cause>``,
one a line; a run without failures removes an earlier one) and ``refineseg predict`` exits with
status 3 (:data:`EXIT_SOME_FAILED`). ``--fail-fast`` stops at the first bad input instead (one-line
error, status 2). An output that cannot be written for lack of space, quota or permissions stops
the batch after the summary, with a one-line error and status 2.

Every output is written under a temporary name and renamed, so an interrupted run (Ctrl-C,
``kill -9``) never leaves a truncated file; ``--skip-existing`` continues it: inputs whose outputs
all exist are skipped, and temporary files of runs no longer alive are removed.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from refineseg.data import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    read_image,
    read_large_image,
    write_label_png,
    write_label_tiff,
)
from refineseg.data.io import write_pil
from refineseg.errors import DataError, RefineSegError, WriteError, file_error, one_line
from refineseg.inference.options import InferenceOptions
from refineseg.inference.predictor import segment
from refineseg.inference.tiling import predict_tiled
from refineseg.models import from_pretrained
from refineseg.report.visualize import overlay
from refineseg.utils.config import option, required
from refineseg.utils.device import select_device
from refineseg.utils.files import is_write_failure, remove_dead_temporaries, write_text

EXIT_SOME_FAILED = 3  # exit status of `refineseg predict` when some inputs failed (2: one-line error, 75: preempted)
ERRORS_FILE = "errors.txt"  # OUT/errors.txt: "<input>: <cause>" per failed input


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
    tile_batch: int = option(1, "tiled mode: tiles of equal size per forward pass (e.g. 4 on a GPU with room); "
                                "memory grows to about tile_batch x one tile's")
    overlay: bool = option(True, "also write <stem>_overlay.png (photo + colours + legend)")
    alpha: float = option(0.5, "overlay opacity of the label colours, 0..1")
    backend: str = option("torch", "inference engine; onnxruntime runs a file from `refineseg export`",
                          choices=["torch", "onnxruntime"])
    skip_existing: bool = option(False, "skip inputs whose outputs (label file, and overlay if enabled) exist: "
                                        "continues an interrupted batch")
    fail_fast: bool = option(False, "stop at the first bad input with a one-line error (exit status 2); by default "
                                    f"bad inputs are skipped, listed in OUT/{ERRORS_FILE}, and the run exits with "
                                    f"status {EXIT_SOME_FAILED}")

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        super().__post_init__()
        if self.tile is not None and not 0 <= self.overlap < self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}")
        if self.tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {self.tile_batch}")
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
        from refineseg.inference.export import OnnxSegmenter

        return OnnxSegmenter(config.checkpoint)
    return config.prepare(from_pretrained(config.checkpoint, map_location=select_device(config.device)))


PREVIEW_SIDE = 4096  # overlays of tiled predictions are drawn at most this large


class PredictResult(list):
    """The label files written, in input order (a ``list`` of Paths), plus what was skipped or failed.

    ``skipped``: label files of inputs skipped by ``skip_existing``; ``failed``: ``(input, line)``
    pairs, ``line`` being the ``<input>: <cause>`` written to errors.txt.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[Path] = []
        self.failed: list[tuple[Path, str]] = []

    @property
    def written(self) -> list[Path]:
        return list(self)

    @property
    def exit_code(self) -> int:
        """0 when every input was written or skipped, :data:`EXIT_SOME_FAILED` otherwise."""
        return EXIT_SOME_FAILED if self.failed else 0


def output_paths(path: Path, name: str, out: Path, config: PredictConfig) -> tuple[Path, Path | None]:
    """(label file, overlay file or None) of one input: tiled TIFF inputs give TIFF label maps."""
    suffix = ".tif" if config.tile and path.suffix.lower() in TIFF_SUFFIXES else ".png"
    return out / f"{name}{suffix}", (out / f"{name}_overlay.png" if config.overlay else None)


def predict_file(model, path: Path, label_path: Path, overlay_path: Path | None, config: PredictConfig) -> None:
    """Segment one image file and write its label map (+ overlay), each atomically.

    Tiled mode reads the image with the decompression-bomb limit lifted (TIFFs memory-mapped when
    uncompressed) and draws the overlay on a preview no larger than ``PREVIEW_SIDE``.
    """
    if config.tile:
        image = read_large_image(path)
        labels = predict_tiled(model, image, tile=config.tile, overlap=config.overlap, tile_batch=config.tile_batch)
    else:
        image = read_image(path)
        labels = segment(model, image, **config.inference_kwargs())
    palette = model.config.palette
    if label_path.suffix == ".tif":
        write_label_tiff(label_path, labels, palette)
    else:
        write_label_png(label_path, labels, palette)
    if overlay_path is not None:
        step = max(1, -(-max(labels.shape) // PREVIEW_SIDE)) if config.tile else 1
        shown = overlay(np.asarray(image[::step, ::step]), labels[::step, ::step], palette,
                        model.config.class_names, alpha=config.alpha)
        write_pil(overlay_path, shown, format="PNG")


def is_input_failure(error: BaseException) -> bool:
    """True for an error of one input (report it, go on); False for one that stops the batch.

    A full disk, a quota, a read-only or forbidden output folder stop it: every later write would
    fail the same way.
    """
    if isinstance(error, WriteError):
        return False
    if isinstance(error, (RefineSegError, MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, OSError) and not is_write_failure(error)


def failure_line(path: Path, error: BaseException) -> str:
    """``<input>: <cause>`` on one line."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return f"{path}: out of memory (try tiled mode, --tile 1024)"
    text = one_line(error)
    return text if text.startswith(f"{path}: ") else f"{path}: {text}"


def _finish(result: PredictResult, total: int, out: Path, stopped: BaseException | None = None) -> None:
    """Write (or remove) OUT/errors.txt and print the summary line."""
    errors = out / ERRORS_FILE
    try:
        if result.failed:
            write_text(errors, "".join(f"{line}\n" for _, line in result.failed))
        else:
            errors.unlink(missing_ok=True)  # from an earlier run: errors.txt describes this run only
    except (WriteError, OSError) as e:
        if stopped is None:
            raise
        print(f"could not write {errors}: {one_line(e)}", file=sys.stderr)
    parts = [f"{len(result)} written", f"{len(result.failed)} failed"]
    if result.skipped:
        parts.append(f"{len(result.skipped)} skipped (outputs exist)")
    done = len(result) + len(result.failed) + len(result.skipped)
    if stopped is not None:
        parts.append(f"{total - done} not processed")
    line = f"{', '.join(parts)} -> {out}"
    if result.failed:
        line += f"; failures listed in {errors}"
    if isinstance(stopped, KeyboardInterrupt):
        line = f"interrupted: {line}; continue with --skip-existing"
    elif stopped is not None:
        line = f"stopped: {line}"
    print(line, flush=True)


def run_predict(config: PredictConfig) -> PredictResult:
    """Segment every input image; write OUT/<stem>.png (+ OUT/<stem>_overlay.png).

    Returns the label files written in input order (see :class:`PredictResult` for skipped and
    failed inputs). A bad input is reported and skipped, or raises its DataError with
    ``config.fail_fast``; inputs that match nothing raise DataError before any work.
    """
    paths = expand_inputs(config.inputs)
    model = load_predictor(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out)
    # Never overwrite an input that happens to live in the output folder.
    taken = {p.name for p in paths if os.path.realpath(p.parent) == os.path.realpath(out)}

    result = PredictResult()
    try:
        # disable=None: no bar when stderr is not a terminal; closing it on errors keeps them on their own line.
        with tqdm(paths, desc="predict", unit="img", disable=None) as bar:
            for path in bar:
                label_path, overlay_path = output_paths(path, _output_name(path.stem, taken), out, config)
                if config.skip_existing and all(p.is_file() for p in (label_path, overlay_path) if p is not None):
                    result.skipped.append(label_path)
                    continue
                try:
                    predict_file(model, path, label_path, overlay_path, config)
                except Exception as e:
                    if config.fail_fast or not is_input_failure(e):
                        raise
                    result.failed.append((path, failure_line(path, e)))
                    tqdm.write(f"error: {result.failed[-1][1]}", file=sys.stderr)
                    continue
                result.append(label_path)
    except BaseException as e:  # Ctrl-C, a full disk, --fail-fast ...: the summary still comes
        if not (config.fail_fast and is_input_failure(e)):  # --fail-fast on a bad input: the old one-line error
            _finish(result, len(paths), out, stopped=e)
        raise
    _finish(result, len(paths), out)
    return result
