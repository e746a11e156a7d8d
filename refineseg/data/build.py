"""Build a dataset from its name, as used by the command line and configs."""

from __future__ import annotations

import os
from typing import Any

from refineseg.errors import DataError, file_error

from .datasets import ADE20K, Cityscapes, SegmentationDataset, Transform, VOCSegmentation
from .folder import FolderDataset
from .io import PathLike
from .synthetic import SyntheticSegmentation

DATASETS = {
    "synthetic": SyntheticSegmentation,
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "folder": FolderDataset,
}


def build_dataset(name: str, root: PathLike | None, split: str, transform: Transform | None = None,
                  **kwargs: Any) -> SegmentationDataset:
    """Create dataset ``name`` (synthetic, voc, cityscapes, ade20k, folder) for ``split``.

    ``root`` is ignored for ``synthetic``; extra keyword arguments go to the dataset class
    (e.g. ``num_samples``/``size``/``seed`` for synthetic, ``classes`` for folder).
    """
    key = name.lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if key == "synthetic":
        return SyntheticSegmentation(split=split, transform=transform, **kwargs)
    if root is None or not os.path.isdir(root):
        shown = "<none>" if root is None else root
        raise file_error(DataError, shown, f"{key} dataset root folder not found")
    return DATASETS[key](root, split, transform=transform, **kwargs)
