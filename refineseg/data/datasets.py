"""Segmentation datasets: a common base class and readers for VOC, Cityscapes, ADE20K and plain folders.

Every dataset yields ``(image, mask)``: without a transform an (H, W, 3) uint8 array and an (H, W)
uint8 array of class indices (255 = ignore); with a transform whatever it returns, normally a
float (3, H, W) tensor and an int64 (H, W) tensor (see :mod:`refineseg.data.transforms`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from refineseg.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
    ade20k_lut,
    cityscapes_lut,
)
from refineseg.data.io import PathLike, read_image, read_mask
from refineseg.errors import DataError, file_error

Transform = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of (image_path, mask_path) pairs plus class metadata.

    ``__getitem__`` reads both files, applies the dataset's label mapping (``label_lut``), checks
    that the sizes agree and that every label is < ``num_classes`` or ``ignore_index``, then runs
    ``transform(image, mask)`` if one is set. If the transform has ``set_sample_seed(index)``
    (see :class:`~refineseg.data.transforms.PairTransform`) it is called first so the random
    augmentation of sample ``index`` does not depend on worker count or access order.

    Files of ``samples`` that do not exist do not stop the constructor: ``missing`` maps each such
    path to its problem line, the data check (:mod:`.check`) reports them together with every other
    bad file, and reading such a sample raises a one-line :class:`DataError` naming the file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, str]],
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        transform: Transform | None = None,
        ignore_index: int = 255,
        label_lut: np.ndarray | None = None,
    ):
        if len(palette) != len(class_names):
            raise ValueError(f"palette has {len(palette)} colours for {len(class_names)} classes")
        if len(class_names) > 255:
            raise ValueError("at most 255 classes fit in a uint8 mask next to the ignore label")
        self.samples = [(os.fspath(i), os.fspath(m)) for i, m in samples]
        self.class_names = list(class_names)
        self.palette = [tuple(int(c) for c in color[:3]) for color in palette]
        self.transform = transform
        self.ignore_index = ignore_index
        self.label_lut = label_lut
        self.missing: dict[str, str] = missing_files(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        """Short name of sample ``index`` (the image file stem), e.g. for prediction file names."""
        return os.path.splitext(os.path.basename(self.samples[index][0]))[0]

    def read_mask(self, mask_path: str) -> np.ndarray:
        """Read one mask and map it to class indices; subclasses override for special formats."""
        mask = read_mask(mask_path)
        return self.label_lut[mask] if self.label_lut is not None else mask

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and check sample ``index``: (H, W, 3) uint8 image, (H, W) uint8 class indices."""
        image_path, mask_path = self.samples[index]
        for path in (image_path, mask_path):
            if path in self.missing and not os.path.exists(path):
                raise DataError(self.missing[path])
        image = read_image(image_path)
        mask = self.read_mask(mask_path)
        self.check_sample(image, mask, image_path, mask_path)
        return image, mask

    def check_sample(
        self, image: np.ndarray, mask: np.ndarray, image_path: str = "<image>", mask_path: str = "<mask>"
    ) -> None:
        """Raise DataError unless sizes match and all labels are valid class indices or ignore."""
        if image.shape[:2] != mask.shape[:2]:
            (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
            raise file_error(DataError, mask_path, f"mask is {mw}x{mh} but image {image_path} is {iw}x{ih}")
        values = np.unique(mask)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if bad.size:
            raise file_error(DataError, mask_path, self.label_range_message(bad.tolist()))

    def label_range_message(self, bad: Sequence[int]) -> str:
        """Why labels ``bad`` (sorted, out of range) are refused; datasets add how to fix it (folder: classes.yaml)."""
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        return (
            f"label values {shown} are out of range: {self.num_classes} classes "
            f"(0..{self.num_classes - 1}) and {self.ignore_index} = ignore"
        )

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask = self.load_sample(index)
        if self.transform is None:
            return image, mask
        if hasattr(self.transform, "set_sample_seed"):
            self.transform.set_sample_seed(index)
        return self.transform(image, mask)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the transform so seeded augmentation differs between epochs."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise file_error(DataError, path, f"{what} not found")


def _read_list(path: str) -> list[str]:
    """Non-empty stripped lines of a split file (first whitespace-separated token of each)."""
    if not os.path.isfile(path):
        raise file_error(DataError, path, "split file not found")
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip() and not line.lstrip().startswith("#")]


def _voc_base(root: str, year: str, marker: str, what: str) -> str:
    """The ``VOC<year>`` folder holding ``marker``: ``root`` may be the folder holding ``VOCdevkit``,
    ``VOCdevkit`` itself or ``VOC<year>``; a one-line :class:`DataError` naming ``root`` otherwise."""
    candidates = [os.path.join(root, "VOCdevkit", f"VOC{year}"), os.path.join(root, f"VOC{year}"), root]
    base = next((c for c in candidates if os.path.isdir(os.path.join(c, marker))), None)
    if base is None:
        raise file_error(DataError, root, f"not a {what} folder (expected VOCdevkit/VOC{year}/{marker} inside)")
    return base


def missing_files(samples: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Every image and mask path of ``samples`` that does not exist, mapped to its one-line problem."""
    missing: dict[str, str] = {}
    for image_path, mask_path in samples:
        if not os.path.exists(image_path):
            missing.setdefault(image_path, f"{image_path}: image listed in the split is missing")
        if not os.path.exists(mask_path):
            missing.setdefault(mask_path, f"{mask_path}: mask for image {image_path} is missing")
    return missing


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 segmentation (21 classes, 255 = object boundary / ignore).

    ``root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC2012``.
    Split ``train_aug`` reads masks from ``SegmentationClassAug`` (the SBD-augmented set).
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        base = _voc_base(root, "2012", "JPEGImages", "PASCAL VOC")
        mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        # Lines are ids; some train_aug.txt copies hold "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png".
        ids = [
            os.path.splitext(os.path.basename(t))[0]
            for t in _read_list(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"))
        ]
        samples = [
            (os.path.join(base, "JPEGImages", f"{i}.jpg"), os.path.join(base, mask_dir, f"{i}.png")) for i in ids
        ]
        super().__init__(samples, VOC_CLASSES, VOC_PALETTE, transform)
        self.root, self.split = base, split


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations with the 19 evaluated classes (trainIds; everything else 255).

    Uses ``*_gtFine_labelTrainIds.png`` when present (made by cityscapesScripts), otherwise maps
    ``*_gtFine_labelIds.png`` through the official labelId -> trainId table.
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        image_root = os.path.join(root, "leftImg8bit", split)
        _require_dir(image_root, f"Cityscapes images for split {split!r}")
        suffix = "_leftImg8bit.png"
        samples, absent = [], {}  # absent annotations: reported by the data check, with every other bad file
        for city in sorted(os.listdir(image_root)):
            city_dir = os.path.join(image_root, city)
            if not os.path.isdir(city_dir):
                continue
            for name in sorted(os.listdir(city_dir)):
                if not name.endswith(suffix):
                    continue
                stem = os.path.join(root, "gtFine", split, city, name[: -len(suffix)])
                mask = stem + "_gtFine_labelTrainIds.png"
                if not os.path.isfile(mask):
                    mask = stem + "_gtFine_labelIds.png"
                if not os.path.isfile(mask):
                    absent[mask] = (
                        f"{mask}: no annotation found for image {os.path.join(city_dir, name)} "
                        f"(expected it or {os.path.basename(stem)}_gtFine_labelTrainIds.png)"
                    )
                samples.append((os.path.join(city_dir, name), mask))
        if not samples:
            raise file_error(DataError, image_root, f"no images found (*{suffix})")
        super().__init__(samples, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, transform)
        self.missing.update(absent)
        self.root, self.split = root, split
        self._lut = cityscapes_lut(self.ignore_index)

    def read_mask(self, mask_path: str) -> np.ndarray:
        mask = read_mask(mask_path)
        return self._lut[mask] if mask_path.endswith("_labelIds.png") else mask


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes; annotation 0 ("other") -> 255."""

    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        if split not in self.SPLITS:
            raise DataError(f"unknown ADE20K split {split!r}; use one of train, val")
        base = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(base):
            base = root
        folder = self.SPLITS[split]
        image_dir = os.path.join(base, "images", folder)
        ann_dir = os.path.join(base, "annotations", folder)
        _require_dir(image_dir, "ADE20K image folder")
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".jpg"))
        if not names:
            raise file_error(DataError, image_dir, "no images found (*.jpg)")
        samples = [(os.path.join(image_dir, n), os.path.join(ann_dir, os.path.splitext(n)[0] + ".png")) for n in names]
        super().__init__(samples, ADE20K_CLASSES, ADE20K_PALETTE, transform, label_lut=ade20k_lut())
        self.root, self.split = base, split
