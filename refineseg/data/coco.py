"""COCO instances as PASCAL VOC semantic masks (the COCO -> SBD -> VOC schedule of Light-Weight RefineNet).

Objects of the 20 COCO categories that VOC shares are drawn with their VOC class index; every
other pixel, including objects of the other 60 categories, is background (0); crowd regions of
the 20 categories are ignored (255). Masks are drawn on the fly from the annotations (polygons,
and run-length encodings both uncompressed and compressed) with no dependency on pycocotools.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from refineseg.data.classes import COCO_TO_VOC, COCO_VOC_NAMES, VOC_CLASSES, VOC_PALETTE
from refineseg.data.datasets import SegmentationDataset, Transform, _require_dir
from refineseg.data.io import PathLike
from refineseg.errors import DataError, file_error


def rle_counts_from_string(text: str) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths.

    Each run length is stored as a variable number of 6-bit groups, each written as
    ``chr(group + 48)``: the low 5 bits carry data (least significant first), bit 0x20 says another
    group follows, and bit 0x10 of the last group is the sign. From the third run on, the value is
    a difference to the run two places back.
    """
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE string ends inside a number")
            group = ord(text[pos]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid character {text[pos]!r} in compressed RLE")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # negative: sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(counts: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask from COCO RLE ``counts``: a list of run lengths or a compressed string.

    Runs alternate between 0 and 1 starting with 0 and go down the columns (column-major order).
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(rle_counts_from_string(counts) if isinstance(counts, str) else counts, dtype=np.int64)
    if (runs.size and runs.min() < 0) or runs.sum() != height * width:
        raise ValueError(f"RLE runs add up to {int(runs.sum())} pixels, expected {height}x{width}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def fill_polygon(mask: np.ndarray, xy: Any, value: int) -> None:
    """Set to ``value`` the pixels of ``mask`` whose centre lies inside the polygon ``[x1, y1, x2, y2, ...]``.

    Pixel (row r, column c) covers [c, c + 1) x [r, r + 1) in COCO coordinates, so its centre is
    (c + 0.5, r + 0.5); a 10 x 10 square from (0, 0) covers exactly 100 pixels. Even-odd rule.
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return
    height, width = mask.shape
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(height)
    yc = rows[:, None] + 0.5  # (H, 1) row centres against (E,) edges
    crosses = (y0 <= yc) != (y1 <= yc)  # the edge spans this row centre (half-open, no double count)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, x0 + (yc - y0) * (x1 - x0) / (y1 - y0), np.inf)
    xs.sort(axis=1)
    n = crosses.sum(axis=1)  # always even for a closed polygon
    change = np.zeros((height, width + 1), np.int32)
    for k in range(0, xs.shape[1] - 1, 2):
        live = rows[n > k + 1]
        if live.size == 0:
            break
        start = np.clip(np.ceil(xs[live, k] - 0.5), 0, width).astype(np.int64)
        stop = np.clip(np.ceil(xs[live, k + 1] - 0.5), 0, width).astype(np.int64)
        np.add.at(change, (live, start), 1)
        np.add.at(change, (live, stop), -1)
    mask[np.cumsum(change, axis=1)[:, :width] > 0] = value


def draw_segmentation(mask: np.ndarray, segmentation: Any, value: int) -> None:
    """Paint one COCO ``segmentation`` (list of polygons, or RLE dict) into ``mask`` with ``value``."""
    height, width = mask.shape
    if isinstance(segmentation, dict):
        size = segmentation.get("size", [height, width])
        if list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's {height}x{width}")
        mask[decode_rle(segmentation["counts"], height, width)] = value
    else:
        for polygon in segmentation:
            fill_polygon(mask, polygon, value)


class COCOVoc(SegmentationDataset):
    """COCO instances (2014 or 2017) mapped to the 21 PASCAL VOC classes.

    ``root`` holds ``train2017/`` and ``val2017/`` (or the 2014 folders) and
    ``annotations/instances_<folder>.json``; ``split`` is ``train`` / ``val`` (2017 when present,
    else 2014) or a folder name such as ``val2014``. Only images with at least one non-crowd
    object of the 20 VOC categories are kept unless ``keep_all``. Larger objects are drawn first,
    so smaller ones lying on them stay visible; crowd regions are drawn below all objects.
    """

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None, keep_all: bool = False
    ):
        root = os.fspath(root)
        folder = (
            split
            if split[-4:].isdigit()
            else next(
                (f"{split}{year}" for year in ("2017", "2014") if os.path.isdir(os.path.join(root, f"{split}{year}"))),
                f"{split}2017",
            )
        )
        image_dir = os.path.join(root, folder)
        _require_dir(image_dir, f"COCO image folder for split {split!r}")
        self.annotation_file = os.path.join(root, "annotations", f"instances_{folder}.json")
        data = _load_json(self.annotation_file)
        names = {c.get("id"): c.get("name") for c in data.get("categories", [])}
        for cat_id, name in COCO_VOC_NAMES.items():
            if cat_id in names and names[cat_id] != name:
                raise file_error(
                    DataError,
                    self.annotation_file,
                    f"category {cat_id} is {names[cat_id]!r}, expected {name!r}: not COCO instances?",
                )
        objects: dict[int, list[tuple[int, float, Any]]] = {}
        for ann in data.get("annotations", []):
            voc = COCO_TO_VOC.get(ann.get("category_id"))
            if voc is not None and "segmentation" in ann:
                value = 255 if ann.get("iscrowd") else voc
                area = float(ann.get("area", 0.0))
                objects.setdefault(ann["image_id"], []).append((value, area, _compact(ann["segmentation"])))
        self._shapes: dict[str, tuple[int, int, int]] = {}
        self._objects: dict[int, list[tuple[int, Any]]] = {}
        samples = []
        for image in sorted(data.get("images", []), key=lambda im: im["file_name"]):
            found = objects.get(image["id"], [])
            if not keep_all and not any(value != 255 for value, _, _ in found):
                continue
            path = os.path.join(image_dir, image["file_name"])
            # Crowds (255) first, then objects from the largest to the smallest.
            found.sort(key=lambda o: (o[0] != 255, -o[1]))
            self._objects[image["id"]] = [(value, seg) for value, _, seg in found]
            self._shapes[path] = (image["id"], int(image["height"]), int(image["width"]))
            samples.append((path, path))  # the mask is drawn from the annotations of this image
        del data
        if not samples:
            raise file_error(DataError, self.annotation_file, "no image with an object of the 20 VOC categories")
        missing = next((p for p, _ in samples if not os.path.isfile(p)), None)
        if missing is not None:
            raise file_error(DataError, missing, f"image listed in {self.annotation_file} is missing")
        super().__init__(samples, VOC_CLASSES, VOC_PALETTE, transform)
        self.root, self.split, self.keep_all = root, split, keep_all

    def read_mask(self, mask_path: str) -> np.ndarray:
        """Draw the VOC mask of the image at ``mask_path`` (the samples' second entry is the image)."""
        image_id, height, width = self._shapes[mask_path]
        mask = np.zeros((height, width), np.uint8)
        for value, segmentation in self._objects.get(image_id, []):
            try:
                draw_segmentation(mask, segmentation, value)
            except (ValueError, KeyError, TypeError) as exc:
                raise file_error(
                    DataError, self.annotation_file, f"image id {image_id}: bad segmentation ({exc})"
                ) from None
        return mask

    def check_fingerprint(self) -> tuple[Any, ...]:
        """What decides the masks, for the data-check cache: the annotation file's identity and the options."""
        st = os.stat(self.annotation_file)
        return self.annotation_file, st.st_size, st.st_mtime_ns, self.keep_all


def _compact(segmentation: Any) -> Any:
    """The segmentation with its number lists as arrays (a fraction of the memory of Python floats)."""
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            segmentation = {**segmentation, "counts": np.asarray(counts, np.int64)}
        return segmentation
    if isinstance(segmentation, list):
        return [np.asarray(p, np.float32) for p in segmentation]
    return segmentation


def _load_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise file_error(DataError, path, "COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise file_error(DataError, path, f"cannot read COCO annotations ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise file_error(DataError, path, "not a COCO instances file (no 'images' list)")
    return data
