"""Self-contained HTML reports: one file with inline CSS, JS and images that opens from disk, offline.

* :func:`write_eval_report` -- ``OUT/report.html`` of ``refineseg evaluate --report`` (and
  ``refineseg report OUT``): summary, sortable per-class table, confusion matrix, trimap curve,
  the worst and best images (image | ground truth | prediction | error map), per-image table.
* :func:`write_training_report` -- ``runs/<name>/report.html``, refreshed after each validation:
  loss, LR and validation curves and the last validation's per-class scores.
* :func:`write_compare_report` -- ``refineseg compare A B``: per-class deltas and the images whose
  mIoU differs most.

Pages are built from the saved outputs only (metrics files, ``predictions/``, the dataset named in
``metrics.json``), so rebuilding gives the same page except for its "Generated" time. Needs no
optional dependency (charts are inline SVG, pictures Pillow PNG/JPEG ``data:`` URIs).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refineseg.errors import DataError, RefineSegError, WriteError, file_error, one_line
from refineseg.report.compare import compare_page, differing_images
from refineseg.report.outputs import (
    is_eval_folder,
    is_training_folder,
    load_eval,
    missing_predictions,
    read_training,
    try_open_dataset,
)
from refineseg.report.pages import eval_page, pick_worst_best, training_page
from refineseg.utils.files import write_text

__all__ = [
    "write_eval_report",
    "write_training_report",
    "write_compare_report",
    "write_report",
    "pick_worst_best",
    "differing_images",
    "REPORT_NAME",
    "MAX_SIDE",
]

log = logging.getLogger("refineseg.report")
REPORT_NAME = "report.html"
LAST_VALIDATION = "last_validation.json"
MAX_SIDE = 512  # longer side, in pixels, of the pictures in a page


def _write_page(path: Path, html: str) -> Path:
    """Write ``html`` to ``path`` atomically, creating its folder; a full disk raises a one-line WriteError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(WriteError, path.parent, f"cannot create the folder ({e.strerror or e})") from None
    write_text(path, html)
    return path


def write_eval_report(
    folder: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    dataset: Any = None,
    worst: int = 6,
    best: int = 3,
    max_side: int = MAX_SIDE,
) -> Path:
    """Write the report of the evaluate output ``folder`` to ``out`` (default ``folder/report.html``).

    ``dataset``: the evaluated dataset when at hand (its ``load_sample`` gives the raw images);
    otherwise it is rebuilt from ``metrics.json["config"]``, and when that fails the page says why
    and shows no pictures. Returns the path written.
    """
    run = load_eval(folder)
    note = missing_predictions(run)
    if note:
        dataset = None
    elif dataset is None:
        dataset, note = try_open_dataset(run.metrics)
    path = Path(out) if out is not None else run.folder / REPORT_NAME
    return _write_page(path, eval_page(run, dataset, note, worst=worst, best=best, max_side=max_side))


def write_training_report(
    out: str | os.PathLike,
    summary: dict[str, Any] | None = None,
    confusion: np.ndarray | None = None,
    *,
    step: int | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> Path | None:
    """Refresh ``out/report.html`` of a training run; called by the trainer after each validation (rank 0).

    ``summary`` (from :func:`refineseg.evaluation.evaluate.evaluate_model`, with its (C, C) ``confusion``
    matrix) is saved as ``out/last_validation.json`` first, so ``refineseg report OUT`` can rebuild
    the page. A page that cannot be built is logged and skipped (None): the report never stops a
    training run. A failed write (a full disk) still raises :class:`~refineseg.errors.WriteError`.
    """
    out = Path(out)
    if summary is not None:
        record = {**summary, "iter": step, "class_names": [c["name"] for c in summary.get("per_class", [])]}
        if palette is not None:
            record["palette"] = [[int(v) for v in c[:3]] for c in palette]
        if confusion is not None:
            record["confusion_matrix"] = np.asarray(confusion).astype(np.int64).tolist()
        write_text(out / LAST_VALIDATION, json.dumps(record) + "\n")
    try:
        html = training_page(out, *read_training(out))
    except WriteError:
        raise
    except Exception as e:  # a report bug must not end a training run of days
        log.warning("%s not refreshed: %s: %s", out / REPORT_NAME, type(e).__name__, one_line(e))
        return None
    write_text(out / REPORT_NAME, html)
    return out / REPORT_NAME


def write_compare_report(
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike = "compare.html",
    *,
    top: int = 6,
    max_side: int = MAX_SIDE,
) -> Path:
    """Write the side-by-side page of evaluate output folders ``a`` and ``b`` (same dataset and classes) to ``out``."""
    run_a, run_b = load_eval(a), load_eval(b)
    note = missing_predictions(run_a) or missing_predictions(run_b)
    dataset, note = (None, note) if note else try_open_dataset(run_a.metrics)
    return _write_page(Path(out), compare_page(run_a, run_b, dataset, note, top=top, max_side=max_side))


def write_report(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    worst: int = 6,
    best: int = 3,
    max_side: int = MAX_SIDE,
) -> Path:
    """``refineseg report RUN_DIR``: rebuild the page of an evaluate folder or a training run folder."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise file_error(DataError, folder, "folder not found")
    if is_eval_folder(folder):
        return write_eval_report(folder, out=out, worst=worst, best=best, max_side=max_side)
    if is_training_folder(folder):
        path = Path(out) if out is not None else folder / REPORT_NAME
        return _write_page(path, training_page(folder, *read_training(folder)))
    raise file_error(
        RefineSegError,
        folder,
        "neither an evaluate output (metrics.json and per_image.csv) nor a training run (metrics.jsonl)",
    )
