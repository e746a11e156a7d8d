"""The data check's memory: which samples passed, by path, size and mtime of both files.

One JSON file per dataset root and split under ``$REFINESEG_HOME/data-check`` (default
``~/.cache/refineseg/data-check``), written atomically: ``{"context": <fingerprint>, "entries":
{image path: [mask path, image size, image mtime_ns, mask size, mask mtime_ns, level]}}``. The
fingerprint covers what decides whether a mask is valid (dataset class, class count, ignore label,
label mapping); when it changes, every sample is checked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from refineseg.data.datasets import SegmentationDataset
from refineseg.errors import WriteError
from refineseg.models.hub import weights_home
from refineseg.utils.files import write_text
from refineseg.version import __version__

log = logging.getLogger("refineseg.data")

CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$REFINESEG_HOME/data-check`` (default ``~/.cache/refineseg/data-check``)."""
    return weights_home().parent / "data-check"


def _small(value: object) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (dict, list, tuple)) and len(value) <= 4096
    )


def fingerprint(dataset: SegmentationDataset) -> str:
    """A hash of what decides whether a mask is valid: class, class count, ignore label, label mapping.

    Taken from the dataset's attributes (arrays by their bytes, small containers by their repr), or
    from its ``check_fingerprint()`` method when it has one.
    """
    h = hashlib.sha256(
        f"{CACHE_VERSION} {__version__} {type(dataset).__module__}.{type(dataset).__qualname__} "
        f"{dataset.num_classes} {dataset.ignore_index}".encode()
    )
    if hasattr(dataset, "check_fingerprint"):
        h.update(str(dataset.check_fingerprint()).encode())
        return h.hexdigest()
    for name, value in sorted(vars(dataset).items()):
        if name in ("samples", "transform", "class_names", "palette", "root", "split"):
            continue
        if isinstance(value, np.ndarray):
            h.update(f"{name} {value.dtype} {value.shape}".encode() + value.tobytes())
        elif _small(value):
            h.update(f"{name} {value!r}".encode())
        elif isinstance(value, (dict, list, tuple)):
            h.update(f"{name} len {len(value)}".encode())
    return h.hexdigest()


def cache_file(dataset: SegmentationDataset) -> Path:
    """The cache file of this dataset's root and split."""
    root = getattr(dataset, "root", None) or os.path.commonpath([os.path.abspath(p) for p, _ in dataset.samples])
    key = json.dumps(
        [
            f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            os.path.abspath(os.fspath(root)),
            str(getattr(dataset, "split", "")),
        ]
    )
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def load_cache(path: Path, context: str) -> dict[str, list]:
    """image path -> [mask path, image size, image mtime_ns, mask size, mask mtime_ns, level]; {} if stale."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("context") != context or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def save_cache(path: Path, context: str, entries: dict[str, list]) -> None:
    """Write the cache atomically (a temporary file renamed into place); a failure only logs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"context": context, "entries": entries}, separators=(",", ":")))
    except (OSError, WriteError) as e:
        log.warning("could not save the data-check cache %s (%s); the next run checks everything again", path, e)


def stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
