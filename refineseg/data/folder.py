"""A dataset from a plain folder of images and masks, the layout users make for their own data.

    root/
      images/<stem>.{png,jpg,jpeg,bmp,tif,tiff,webp}
      masks/<stem>.png            # class-index PNG (palette or grey), or RGB in the class colours
      classes.yaml | classes.json # [{name: road, color: [128, 64, 128]}, ...] or {road: [128, 64, 128]}
      splits/<split>.txt          # optional: one stem per line (root/<split>.txt also works)

Instead of split files, ``root/<split>/images`` and ``root/<split>/masks`` may be used.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import DataError, file_error

from ..palette import color_palette
from .classes import Color
from .datasets import SegmentationDataset, Transform, _read_list
from .io import IMAGE_SUFFIXES, PathLike, read_mask

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


def _parse_color(value: Any, source: str, what: str) -> Color | None:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise file_error(DataError, source, f"colour of {what} must be [r, g, b] with 0..255, got {value!r}")


def parse_classes(spec: Any, source: str = "<classes>") -> tuple[list[str], list[Color | None], Color | None]:
    """Read a class list in any accepted form into (names, colours or None, ignore colour or None).

    Accepted: a list of ``{name, color}`` entries or plain names, a mapping ``name -> [r, g, b]``,
    or ``{classes: <one of those>, ignore_color: [r, g, b]}``.
    """
    ignore_color = None
    if isinstance(spec, dict) and isinstance(spec.get("classes"), (list, dict)):
        ignore_color = _parse_color(spec.get("ignore_color"), source, "ignore_color")
        spec = spec["classes"]
    names: list[str] = []
    colors: list[Color | None] = []
    if isinstance(spec, dict):
        for name, color in spec.items():
            names.append(str(name))
            colors.append(_parse_color(color, source, f"class {name!r}"))
    elif isinstance(spec, list):
        for i, entry in enumerate(spec):
            if isinstance(entry, str):
                names.append(entry)
                colors.append(None)
            elif isinstance(entry, dict) and "name" in entry:
                names.append(str(entry["name"]))
                colors.append(_parse_color(entry.get("color"), source, f"class {entry['name']!r}"))
            else:
                raise file_error(DataError, source, f"entry {i} must be a name or {{name, color}}, got {entry!r}")
    else:
        raise file_error(DataError, source, "expected a list of classes or a mapping name -> colour")
    if not names:
        raise file_error(DataError, source, "no classes listed")
    if len(set(names)) != len(names):
        raise file_error(DataError, source, "class names must be unique")
    given = [c for c in colors if c is not None] + ([ignore_color] if ignore_color else [])
    if len(set(given)) != len(given):
        raise file_error(DataError, source, "two classes (or a class and ignore_color) share a colour")
    return names, colors, ignore_color


def load_classes_file(path: PathLike) -> tuple[list[str], list[Color | None], Color | None]:
    """Parse ``classes.yaml`` / ``classes.json``; see :func:`parse_classes` for the format."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                spec = json.load(f)
            else:
                import yaml
                spec = yaml.safe_load(f)
    except OSError as exc:
        raise file_error(DataError, path, f"cannot read ({exc.strerror})") from None
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        cause = " ".join(str(exc).split())
        raise file_error(DataError, path, f"cannot parse ({cause})") from None
    return parse_classes(spec, path)


def _list_images(folder: str) -> dict[str, str]:
    """Map file stem -> image path for the image files directly inside ``folder``."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_SUFFIXES or not os.path.isfile(os.path.join(folder, name)):
            continue
        if stem in found:
            raise file_error(DataError, os.path.join(folder, name),
                             f"two images share the stem {stem!r} (also {found[stem]})")
        found[stem] = os.path.join(folder, name)
    return found


class FolderDataset(SegmentationDataset):
    """Images and masks matched by file stem, classes from ``classes.yaml`` (see module docstring).

    ``classes`` (same forms as the file) overrides the classes file. RGB masks are mapped to
    class indices through the class colours; ``ignore_color`` (here or in the file) maps to 255.
    """

    def __init__(self, root: PathLike, split: str | None = None, classes: Any = None,
                 transform: Transform | None = None, ignore_color: Color | None = None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise file_error(DataError, root, "dataset folder not found")
        names, colors, file_ignore = self._load_classes(root, classes)
        if ignore_color is not None:
            ignore_color = _parse_color(list(ignore_color), "ignore_color argument", "ignore_color")
        else:
            ignore_color = file_ignore
        image_dir, mask_dir, stems, split_file = self._resolve_split(root, split)
        if not os.path.isdir(image_dir):
            raise file_error(DataError, image_dir, "images folder not found")
        images = _list_images(image_dir)
        if stems is None:
            stems = list(images)
        if not stems:
            raise file_error(DataError, split_file or image_dir, "no images found")
        samples = []
        for stem in stems:
            if stem not in images:
                raise file_error(DataError, split_file or image_dir,
                                 f"lists {stem!r} but there is no image {image_dir}/{stem}.*")
            mask = os.path.join(mask_dir, stem + ".png")
            if not os.path.isfile(mask):
                raise file_error(DataError, images[stem], f"no mask found (expected {mask})")
            samples.append((images[stem], mask))

        fallback = color_palette(len(names))
        palette = [c if c is not None else fallback[i] for i, c in enumerate(colors)]
        super().__init__(samples, names, palette, transform)
        self.root, self.split = root, split
        self.color_to_label: dict[Color, int] | None = None
        if any(c is not None for c in colors):
            self.color_to_label = {c: i for i, c in enumerate(colors) if c is not None}
            if ignore_color is not None:
                self.color_to_label[ignore_color] = self.ignore_index

    @staticmethod
    def _load_classes(root: str, classes: Any) -> tuple[list[str], list[Color | None], Color | None]:
        if classes is not None:
            return parse_classes(classes, "classes argument")
        for name in CLASS_FILES:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                return load_classes_file(path)
        raise file_error(DataError, os.path.join(root, "classes.yaml"),
                         "classes file not found; add one listing the classes in label order, "
                         "e.g. '- {name: background, color: [0, 0, 0]}'")

    @staticmethod
    def _resolve_split(root: str, split: str | None) -> tuple[str, str, list[str] | None, str | None]:
        """Return (image dir, mask dir, stems or None for all, split file used or None)."""
        images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
        if split is None:
            return images, masks, None, None
        for path in (os.path.join(root, "splits", f"{split}.txt"), os.path.join(root, f"{split}.txt")):
            if os.path.isfile(path):
                return images, masks, _read_list(path), path
        sub = os.path.join(root, split)
        if os.path.isdir(os.path.join(sub, "images")):
            return os.path.join(sub, "images"), os.path.join(sub, "masks"), None, None
        raise file_error(DataError, os.path.join(root, "splits", f"{split}.txt"),
                         f"split file not found (also looked for {root}/{split}.txt and "
                         f"{root}/{split}/images/)")

    def read_mask(self, mask_path: str) -> np.ndarray:
        return read_mask(mask_path, self.color_to_label)
