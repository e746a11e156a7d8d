"""Build a dataset from its name, as used by the command line and configs."""

from __future__ import annotations

import os
from typing import Any

from refineseg.data.benchmarks import SUNRGBD, CamVid, NYUDv2, PascalContext, PascalContext59, PascalPersonPart
from refineseg.data.coco import COCOVoc
from refineseg.data.datasets import ADE20K, Cityscapes, SegmentationDataset, Transform, VOCSegmentation
from refineseg.data.folder import FolderDataset
from refineseg.data.io import PathLike
from refineseg.data.synthetic import SyntheticSegmentation
from refineseg.errors import DataError, file_error

#: Dataset names accepted by :func:`build_dataset` (and ``--dataset``), the one list of them.
DATASETS = {
    "synthetic": SyntheticSegmentation,
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "nyudv2": NYUDv2,
    "person_part": PascalPersonPart,
    "pascal_context": PascalContext,
    "pascal_context59": PascalContext59,
    "sunrgbd": SUNRGBD,
    "coco_voc": COCOVoc,
    "camvid": CamVid,
    "folder": FolderDataset,
}


def build_dataset(
    name: str,
    root: PathLike | None,
    split: str,
    transform: Transform | None = None,
    *,
    synthetic_samples: int | None = None,
    synthetic_size: int = 128,
    binary_masks: bool = False,
    **kwargs: Any,
) -> SegmentationDataset:
    """Create dataset ``name`` (one of :data:`DATASETS`, e.g. voc, nyudv2, coco_voc, folder) for ``split``.

    ``root`` is ignored for ``synthetic``, which takes ``synthetic_samples`` images (default: its
    split's size) of ``synthetic_size`` pixels; the other datasets ignore those two. Further
    keyword arguments go to the dataset class (e.g. ``classes`` for folder, ``keep_all`` for coco_voc).
    ``binary_masks`` (0/255 masks as background/foreground) is a folder-dataset option; the one place
    every command's ``--binary-masks`` flag goes through.
    """
    key = name.lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if binary_masks:
        if key != "folder":
            raise DataError(f"binary masks are a folder-dataset option, not one of {key}")
        kwargs["binary_masks"] = True
    if key == "synthetic":
        return SyntheticSegmentation(
            split=split, num_samples=synthetic_samples, size=synthetic_size, transform=transform, **kwargs
        )
    if root is None or not os.path.isdir(root):
        shown = "<none>" if root is None else root
        raise file_error(DataError, shown, f"{key} dataset root folder not found")
    return DATASETS[key](root, split, transform=transform, **kwargs)
