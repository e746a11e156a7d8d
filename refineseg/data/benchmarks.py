"""Readers for RefineNet's other benchmarks: NYUDv2-40, PASCAL-Person-Part, PASCAL-Context, SUN RGB-D, CamVid.

Each reads the folder layout of the dataset's common distribution (see ``docs/datasets.md``) and
yields what every :class:`~.datasets.SegmentationDataset` yields: an (H, W, 3) uint8 image and an
(H, W) uint8 mask of class indices, 255 = ignore. NYUDv2 ships as one MATLAB file; convert it once
with :func:`prepare_nyudv2` (COCO -> VOC lives in :mod:`.coco`).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import numpy as np

from refineseg.data.classes import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    NYUDV2_CLASSES,
    NYUDV2_PALETTE,
    PASCAL_CONTEXT_CLASSES,
    PASCAL_CONTEXT_PALETTE,
    PERSON_PART_CLASSES,
    PERSON_PART_PALETTE,
    SUNRGBD_CLASSES,
    SUNRGBD_PALETTE,
    camvid_lut,
    zero_void_lut,
)
from refineseg.data.datasets import SegmentationDataset, Transform, _read_list, _require_dir, _voc_base
from refineseg.data.io import PathLike, write_image, write_label_png
from refineseg.errors import DataError, MissingDependencyError, file_error


def _split_name(split: str, aliases: dict[str, str], dataset: str) -> str:
    """The split's name in the distribution (e.g. NYUDv2's 654 test images are Light-Weight RefineNet's 'val')."""
    if split not in aliases:
        raise DataError(f"unknown {dataset} split {split!r}; use one of {', '.join(sorted(set(aliases)))}")
    return aliases[split]


def _read_pairs(path: str) -> list[tuple[str, str]]:
    """(first, last) whitespace-separated fields of each line of a list file, e.g. image and label."""
    if not os.path.isfile(path):
        raise file_error(DataError, path, "split file not found")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 2:
                raise file_error(DataError, path, f"line {number}: expected an image and a label path")
            pairs.append((fields[0], fields[-1]))
    return pairs


def _join(base: str, relative: str) -> str:
    """``relative`` (as written in a list file, maybe with a leading '/') inside ``base``."""
    return os.path.join(base, relative.lstrip("/\\"))


# ------------------------------------------------------------------------------------- NYUDv2
class NYUDv2(SegmentationDataset):
    """NYUDv2 with the 40-class mapping of Gupta et al. (795 train, 654 test images).

    Reads either of two folder layouts in ``root``:

    * Light-Weight RefineNet's (also what :func:`prepare_nyudv2` writes): ``train.nyu`` / ``val.nyu``
      listing ``<image> <label>`` relative paths (``train_images/000003.png  train_labels/000003.png``);
      labels are class indices 0..39 with 255 = unlabelled. Splits ``train`` and ``val`` (= ``test``).
    * ``images/<name>.png|jpg``, ``labels40/<name>.png`` with 0 = unlabelled and 1..40 the classes,
      and ``train.txt`` / ``test.txt`` listing the names. Splits ``train`` and ``test`` (= ``val``).
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        lw_name = _split_name(split, {"train": "train", "val": "val", "test": "val"}, "NYUDv2")
        if any(os.path.isfile(os.path.join(root, f"{n}.nyu")) for n in ("train", "val")):
            pairs = _read_pairs(os.path.join(root, f"{lw_name}.nyu"))
            samples = [(_join(root, i), _join(root, m)) for i, m in pairs]
            lut = None
        elif os.path.isdir(os.path.join(root, "labels40")):
            name = "test" if lw_name == "val" else "train"
            stems = _read_list(os.path.join(root, f"{name}.txt"))
            image_dir = os.path.join(root, "images")
            _require_dir(image_dir, "NYUDv2 image folder")
            samples = [(_find_image(image_dir, s), os.path.join(root, "labels40", f"{s}.png")) for s in stems]
            lut = zero_void_lut()
        else:
            hint = ""
            if os.path.isfile(os.path.join(root, "nyu_depth_v2_labeled.mat")):
                hint = " (found nyu_depth_v2_labeled.mat: convert it with refineseg.data.prepare_nyudv2)"
            raise file_error(
                DataError,
                root,
                "not an NYUDv2 folder: expected train.nyu/val.nyu "
                "(Light-Weight RefineNet layout) or labels40/ with train.txt/test.txt" + hint,
            )
        super().__init__(samples, NYUDV2_CLASSES, NYUDV2_PALETTE, transform, label_lut=lut)
        self.root, self.split = root, split


def _find_image(folder: str, stem: str) -> str:
    """``folder/stem.png`` or ``.jpg``/``.jpeg``, whichever exists (the .png path if none)."""
    for suffix in (".png", ".jpg", ".jpeg"):
        path = os.path.join(folder, stem + suffix)
        if os.path.isfile(path):
            return path
    return os.path.join(folder, stem + ".png")


def _import_optional(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{why} needs {module} (not installed): pip install 'refineseg[nyu]'") from None


def _loadmat(path: PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Variables ``keys`` of a MATLAB v5 file (scipy), each a 1-D array; DataError naming a missing one."""
    scipy_io = _import_optional("scipy.io", "reading classMapping40.mat / splits.mat")
    if not os.path.isfile(path):
        raise file_error(DataError, path, "file not found")
    try:
        data = scipy_io.loadmat(os.fspath(path))
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError ... on foreign files
        raise file_error(DataError, path, f"not a MATLAB v5 .mat file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in keys if k not in data]
    if missing:
        raise file_error(DataError, path, f"no variable {missing[0]!r} in this .mat file")
    return {k: np.asarray(data[k]).ravel() for k in keys}


def prepare_nyudv2(
    mat_path: PathLike, mapping_path: PathLike, splits_path: PathLike, out_dir: PathLike
) -> dict[str, int]:
    """Convert the official NYUDv2 release once into the folder layout :class:`NYUDv2` reads.

    ``mat_path``: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5: ``images`` stored as
    (N, 3, W, H) uint8 and ``labels`` as (N, W, H) uint16, i.e. transposed, labels 0 = unlabelled and
    1..894 the raw classes); ``mapping_path``: ``classMapping40.mat`` (``mapClass``: raw class ->
    1..40); ``splits_path``: ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based). Writes
    ``train_images/``, ``train_labels/``, ``val_images/``, ``val_labels/`` (PNG, named by the 1-based
    index ``%06d``; labels 0..39, 255 = unlabelled) and the lists ``train.nyu`` / ``val.nyu``, the
    layout of Light-Weight RefineNet (whose images also had their white border cropped; these do
    not). Needs ``h5py`` and ``scipy``. Returns the number of images written per split.
    """
    h5py = _import_optional("h5py", "reading nyu_depth_v2_labeled.mat")
    map_class = _loadmat(mapping_path, ("mapClass",))["mapClass"].astype(np.int64)
    if map_class.size == 0 or map_class.min() < 0 or map_class.max() > len(NYUDV2_CLASSES):
        raise file_error(DataError, mapping_path, f"mapClass values must be 0..{len(NYUDV2_CLASSES)}")
    lut = np.full(map_class.size + 1, 255, np.uint8)  # raw 0 (unlabelled) and classes mapped to 0 -> 255
    lut[1:][map_class > 0] = map_class[map_class > 0] - 1
    splits = _loadmat(splits_path, ("trainNdxs", "testNdxs"))
    if not os.path.isfile(mat_path):
        raise file_error(DataError, mat_path, "file not found")
    try:
        mat = h5py.File(os.fspath(mat_path), "r")
    except OSError as exc:
        raise file_error(DataError, mat_path, f"not a MATLAB v7.3 (HDF5) file ({exc})") from None
    counts = {}
    with mat:
        for key in ("images", "labels"):
            if key not in mat:
                raise file_error(DataError, mat_path, f"no dataset {key!r}: not nyu_depth_v2_labeled.mat?")
        images, labels = mat["images"], mat["labels"]
        total = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3 or labels.shape != (total, *images.shape[2:]):
            raise file_error(DataError, mat_path, f"unexpected shapes: images {images.shape}, labels {labels.shape}")
        out_dir = os.fspath(out_dir)
        for name, indices in (("train", splits["trainNdxs"]), ("val", splits["testNdxs"])):
            indices = indices.astype(np.int64)
            if indices.size and (indices.min() < 1 or indices.max() > total):
                raise file_error(DataError, splits_path, f"indices must be 1..{total} (1-based)")
            lines = []
            for index in indices.tolist():
                raw = np.asarray(labels[index - 1]).T  # (W, H) -> (H, W)
                if raw.max(initial=0) >= lut.size:
                    raise file_error(
                        DataError,
                        mat_path,
                        f"image {index}: label {int(raw.max())} "
                        f"has no entry in {mapping_path} ({lut.size - 1} classes)",
                    )
                image_rel, label_rel = f"{name}_images/{index:06d}.png", f"{name}_labels/{index:06d}.png"
                write_image(os.path.join(out_dir, image_rel), np.asarray(images[index - 1]).transpose(2, 1, 0))
                write_label_png(os.path.join(out_dir, label_rel), lut[raw], NYUDV2_PALETTE)
                lines.append(f"{image_rel}\t{label_rel}\n")
            with open(os.path.join(out_dir, f"{name}.nyu"), "w", encoding="utf-8") as f:
                f.writelines(lines)
            counts[name] = len(lines)
    return counts


# --------------------------------------------------------------------------- PASCAL-Person-Part
class PascalPersonPart(SegmentationDataset):
    """PASCAL-Person-Part (7 classes: background + 6 body parts; 1716 train, 1817 val images).

    ``root`` is the folder of DeepLab's ``pascal_person_part`` release or its parent. Lists come
    from ``pascal_person_part_trainval_list/<split>_id.txt`` (ids) or ``<split>.txt`` (pairs), masks
    (values 0..6) from ``pascal_person_part_gt/`` or ``SegmentationPart/``, and the VOC photos from
    a ``JPEGImages/`` folder next to them, above them, or in ``VOCdevkit/VOC2010`` (or VOC2012).
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        if split not in ("train", "val"):
            raise DataError(f"unknown PASCAL-Person-Part split {split!r}; use one of train, val")
        base = os.path.join(root, "pascal_person_part")
        if not os.path.isdir(base):
            base = root
        list_dir = os.path.join(base, "pascal_person_part_trainval_list")
        _require_dir(list_dir, "PASCAL-Person-Part list folder")
        mask_dir = next(
            (
                os.path.join(base, d)
                for d in ("pascal_person_part_gt", "SegmentationPart")
                if os.path.isdir(os.path.join(base, d))
            ),
            None,
        )
        if mask_dir is None:
            raise file_error(DataError, base, "no mask folder (pascal_person_part_gt/ or SegmentationPart/)")
        parent = os.path.dirname(os.path.abspath(base))
        places = [base, root, parent] + [
            os.path.join(p, "VOCdevkit", v) for p in (root, parent) for v in ("VOC2010", "VOC2012")
        ]
        image_dir = next(
            (os.path.join(p, "JPEGImages") for p in places if os.path.isdir(os.path.join(p, "JPEGImages"))), None
        )
        if image_dir is None:
            raise file_error(
                DataError,
                base,
                "no JPEGImages/ folder with the VOC photos found next to, above or in VOCdevkit/VOC2010 (or VOC2012)",
            )
        id_list, pair_list = (os.path.join(list_dir, f"{split}{s}.txt") for s in ("_id", ""))
        if os.path.isfile(id_list) or not os.path.isfile(pair_list):
            ids = _read_list(id_list)
        else:  # "/JPEGImages/<id>.jpg /SegmentationPart/<id>.png"
            ids = [os.path.splitext(os.path.basename(i))[0] for i, _ in _read_pairs(pair_list)]
        samples = [(os.path.join(image_dir, f"{i}.jpg"), os.path.join(mask_dir, f"{i}.png")) for i in ids]
        super().__init__(samples, PERSON_PART_CLASSES, PERSON_PART_PALETTE, transform)
        self.root, self.split = base, split


# ------------------------------------------------------------------------------ PASCAL-Context
class PascalContext(SegmentationDataset):
    """PASCAL-Context, 59 classes + background = 60 (4996 train, 5104 val images).

    The mmsegmentation layout: ``VOCdevkit/VOC2010/`` (``root`` may also be ``VOCdevkit`` or
    ``VOC2010``) with ``JPEGImages/``, ``SegmentationClassContext/*.png`` (0 = background, 1..59)
    and ``ImageSets/SegmentationContext/{train,val}.txt``. :class:`PascalContext59` drops background.
    """

    with_background = True

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        base = _voc_base(root, "2010", "SegmentationClassContext", "PASCAL-Context")
        ids = _read_list(os.path.join(base, "ImageSets", "SegmentationContext", f"{split}.txt"))
        samples = [
            (os.path.join(base, "JPEGImages", f"{i}.jpg"), os.path.join(base, "SegmentationClassContext", f"{i}.png"))
            for i in ids
        ]
        if self.with_background:
            super().__init__(samples, PASCAL_CONTEXT_CLASSES, PASCAL_CONTEXT_PALETTE, transform)
        else:
            super().__init__(
                samples, PASCAL_CONTEXT_CLASSES[1:], PASCAL_CONTEXT_PALETTE[1:], transform, label_lut=zero_void_lut()
            )
        self.root, self.split = base, split


class PascalContext59(PascalContext):
    """PASCAL-Context with the 59 object/stuff classes only: background (0) -> 255, k -> k - 1."""

    with_background = False


# ------------------------------------------------------------------------------------ SUN RGB-D
class SUNRGBD(SegmentationDataset):
    """SUN RGB-D, 37 classes (5285 train, 5050 test images); annotation 0 (unlabelled) -> 255.

    Reads Ankur Handa's release: ``SUNRGBD-train_images/img-%06d.jpg``, ``SUNRGBD-test_images/``
    and one label folder ``sunrgbd_train_test_labels/img-%06d.png`` (or the same files moved into
    ``labels/train`` and ``labels/test``) in which labels 1..5050 belong to the test images and
    5051..10335 to train images 1..5285. Also reads ``train37.txt`` / ``test37.txt`` lists
    (``<image> <depth> <label>`` relative paths, the reorganised copy at github.com/chrischoy/SUN_RGBD).
    """

    NUM_TEST = 5050  # the test labels come first in sunrgbd_train_test_labels
    _NUMBER = re.compile(r"img-(\d+)\.jpg$")

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        name = _split_name(split, {"train": "train", "test": "test", "val": "test"}, "SUN RGB-D")
        list_file = os.path.join(root, f"{name}37.txt")
        if os.path.isfile(list_file):
            samples = [(_join(root, i), _join(root, m)) for i, m in _read_pairs(list_file)]
        else:
            image_dir = os.path.join(root, f"SUNRGBD-{name}_images")
            _require_dir(image_dir, f"SUN RGB-D {name} image folder")
            label_dir = os.path.join(root, "labels", name)
            if not os.path.isdir(label_dir):
                label_dir = os.path.join(root, "sunrgbd_train_test_labels")
                _require_dir(label_dir, "SUN RGB-D label folder")
            offset = self.NUM_TEST if name == "train" else 0
            numbered = sorted((int(m.group(1)), n) for n in os.listdir(image_dir) if (m := self._NUMBER.match(n)))
            if not numbered:
                raise file_error(DataError, image_dir, "no images found (img-NNNNNN.jpg)")
            samples = [
                (os.path.join(image_dir, n), os.path.join(label_dir, f"img-{k + offset:06d}.png")) for k, n in numbered
            ]
        super().__init__(samples, SUNRGBD_CLASSES, SUNRGBD_PALETTE, transform, label_lut=zero_void_lut())
        self.root, self.split = root, split


# --------------------------------------------------------------------------------------- CamVid
class CamVid(SegmentationDataset):
    """CamVid as distributed with the SegNet tutorial: 11 classes, 480x360 frames, 11 = void (ignored).

    ``root`` holds ``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/``, ``testannot/``
    (frames and single-channel label PNGs of the same names), or the pair lists ``train.txt``,
    ``val.txt``, ``test.txt`` (``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``:
    the part up to ``CamVid/`` is dropped, the rest is relative to ``root``). Splits: train (367),
    val (101), test (233), ``trainval`` = train + val.
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Transform | None = None):
        root = os.fspath(root)
        names = {"train": ["train"], "val": ["val"], "test": ["test"], "trainval": ["train", "val"]}
        if split not in names:
            raise DataError(f"unknown CamVid split {split!r}; use one of {', '.join(names)}")
        samples = [pair for name in names[split] for pair in _camvid_split(root, name)]
        super().__init__(samples, CAMVID_CLASSES, CAMVID_PALETTE, transform, label_lut=camvid_lut())
        self.root, self.split = root, split


def _camvid_split(root: str, name: str) -> list[tuple[str, str]]:
    """(image, label) paths of one CamVid split: from ``<name>/`` + ``<name>annot/``, else ``<name>.txt``."""
    image_dir, label_dir = os.path.join(root, name), os.path.join(root, f"{name}annot")
    if os.path.isdir(image_dir) and os.path.isdir(label_dir):
        files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith((".png", ".jpg", ".jpeg")))
        if not files:
            raise file_error(DataError, image_dir, "no CamVid frames (.png) found")
        return [(os.path.join(image_dir, f), os.path.join(label_dir, os.path.splitext(f)[0] + ".png")) for f in files]
    list_file = os.path.join(root, f"{name}.txt")
    if not os.path.isfile(list_file):
        raise file_error(DataError, root, f"not a CamVid folder: expected {name}/ and {name}annot/, or {name}.txt")
    return [(_join(root, _after_camvid(i)), _join(root, _after_camvid(m))) for i, m in _read_pairs(list_file)]


def _after_camvid(path: str) -> str:
    """A SegNet list path relative to the CamVid root: ``/SegNet/CamVid/train/a.png`` -> ``train/a.png``."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[parts.index("CamVid") + 1 :]) if "CamVid" in parts else path
