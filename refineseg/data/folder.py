"""A dataset from a plain folder of images and masks, the layout users make for their own data.

    root/
      images/<stem>.{png,jpg,jpeg,bmp,tif,tiff,webp}
      masks/<stem>.png            # class-index PNG (palette or grey), or RGB in the class colours
      classes.yaml | classes.json # [{name: road, color: [128, 64, 128]}, ...] or {road: [128, 64, 128]}
      splits/<split>.txt          # optional: one stem per line (root/<split>.txt also works)

Instead of split files, ``root/<split>/images`` and ``root/<split>/masks`` may be used.

The classes file may also be a mapping with the class list under ``classes:`` and options:
``ignore_color: [r, g, b]``, ``map: {7: 1, 8: 2, 9: ignore}`` (raw mask value -> class index;
unlisted values are kept) and ``binary: true`` (0/255 foreground masks: 0 -> background 0,
1 and 128..255 -> foreground 1, 2..127 -> background; ``classes`` optional). See docs/custom_data.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refineseg.data.classes import Color
from refineseg.data.datasets import SegmentationDataset, Transform, _read_list
from refineseg.data.io import IMAGE_SUFFIXES, PathLike, _mask_from_pil, _open_loaded, colors_to_labels
from refineseg.errors import DataError, file_error
from refineseg.utils.palette import color_palette

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
IGNORE = 255
OPTION_KEYS = ("classes", "ignore_color", "map", "binary")
BINARY_NAMES = ["background", "foreground"]


@dataclass
class ClassSpec:
    """A parsed classes file: names and colours in label order, plus how raw mask values map to labels.

    ``label_map`` maps raw values of single-channel masks to class indices (255 = ignore); ``binary``
    turns 0/255 (or 0/1) masks into background 0 / foreground 1 before ``label_map`` applies.
    """

    names: list[str]
    colors: list[Color | None]
    ignore_color: Color | None = None
    label_map: dict[int, int] = field(default_factory=dict)
    binary: bool = False


def _parse_color(value: Any, source: str, what: str) -> Color | None:
    if value is None:
        return None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise file_error(DataError, source, f"colour of {what} must be [r, g, b] with 0..255, got {value!r}")


def _parse_list(spec: Any, source: str) -> tuple[list[str], list[Color | None]]:
    """Names and colours from a list of names / ``{name, color}`` entries or a mapping name -> colour."""
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
    return names, colors


def _parse_int(value: Any) -> int | None:
    """``value`` as an int (YAML ints, JSON's string keys such as "7"), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _parse_map(spec: Any, num_classes: int, source: str) -> dict[int, int]:
    """``{raw value: class index or 'ignore'}`` -> ``{raw: label}``, every entry range-checked."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise file_error(DataError, source, f"map must be a mapping raw value -> class index, got {spec!r}")
    label_map: dict[int, int] = {}
    for key, value in spec.items():
        raw = _parse_int(key)
        if raw is None or not 0 <= raw <= 255:
            raise file_error(DataError, source, f"map: key {key!r} must be a mask value 0..255")
        label = IGNORE if isinstance(value, str) and value.strip().lower() == "ignore" else _parse_int(value)
        if label is None or not (0 <= label < num_classes or label == IGNORE):
            raise file_error(
                DataError,
                source,
                f"map: {raw} -> {value!r} must be a class index 0..{num_classes - 1}, "
                f"255 or 'ignore' ({num_classes} classes listed)",
            )
        label_map[raw] = label
    return label_map


def parse_class_spec(spec: Any, source: str = "<classes>") -> ClassSpec:
    """Read a classes file's content (already parsed from YAML/JSON) into a :class:`ClassSpec`.

    Accepted: a list of ``{name, color}`` entries or plain names, a mapping ``name -> [r, g, b]``,
    or a mapping with ``classes:`` (one of those) and the options ``ignore_color``, ``map``, ``binary``
    (with ``binary: true``, ``classes`` may be left out or list only the foreground class).
    """
    options: dict[str, Any] = {}
    if isinstance(spec, dict) and any(k in spec for k in OPTION_KEYS[1:]) and "classes" not in spec:
        if spec.get("binary") is not True:
            raise file_error(
                DataError, source, "put the class list under `classes:` when using ignore_color, map or binary"
            )
        spec = {**spec, "classes": None}
    if isinstance(spec, dict) and "classes" in spec:
        unknown = [str(k) for k in spec if k not in OPTION_KEYS]
        if unknown:
            raise file_error(
                DataError, source, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(OPTION_KEYS)}"
            )
        options, spec = spec, spec["classes"]
    binary = options.get("binary", False)
    if not isinstance(binary, bool):
        raise file_error(DataError, source, f"binary must be true or false, got {binary!r}")
    if binary and spec is None:
        names, colors = list(BINARY_NAMES), [None, None]
    else:
        names, colors = _parse_list(spec, source)
    if binary and len(names) == 1:  # one-class list: the foreground's name; background is implied
        names, colors = [BINARY_NAMES[0]] + names, [None] + colors
    if not names:
        raise file_error(DataError, source, "no classes listed")
    if binary and len(names) != 2:
        raise file_error(
            DataError, source, f"binary masks give 2 classes (background, foreground), but {len(names)} are listed"
        )
    if len(names) == 1:
        raise file_error(
            DataError,
            source,
            f"only one class ({names[0]!r}) listed: a mask needs a background "
            "class too; list it first, or set `binary: true` for 0/255 foreground masks",
        )
    if len(set(names)) != len(names):
        raise file_error(DataError, source, "class names must be unique")
    ignore_color = _parse_color(options.get("ignore_color"), source, "ignore_color")
    given = [c for c in colors if c is not None] + ([ignore_color] if ignore_color else [])
    if len(set(given)) != len(given):
        raise file_error(DataError, source, "two classes (or a class and ignore_color) share a colour")
    return ClassSpec(names, colors, ignore_color, _parse_map(options.get("map"), len(names), source), binary)


def parse_classes(spec: Any, source: str = "<classes>") -> tuple[list[str], list[Color | None], Color | None]:
    """(names, colours or None, ignore colour or None) of a class list; see :func:`parse_class_spec`."""
    parsed = parse_class_spec(spec, source)
    return parsed.names, parsed.colors, parsed.ignore_color


def _load_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                return json.load(f)
            import yaml

            return yaml.safe_load(f)
    except OSError as exc:
        raise file_error(DataError, path, f"cannot read ({exc.strerror})") from None
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        cause = " ".join(str(exc).split())
        raise file_error(DataError, path, f"cannot parse ({cause})") from None


def load_class_spec(path: PathLike) -> ClassSpec:
    """Parse ``classes.yaml`` / ``classes.json`` into a :class:`ClassSpec`; errors are one line naming the file."""
    path = os.fspath(path)
    return parse_class_spec(_load_file(path), path)


def load_classes_file(path: PathLike) -> tuple[list[str], list[Color | None], Color | None]:
    """(names, colours, ignore colour) of ``classes.yaml`` / ``classes.json``; see :func:`parse_class_spec`."""
    parsed = load_class_spec(path)
    return parsed.names, parsed.colors, parsed.ignore_color


def label_lut(label_map: Mapping[int, int], binary: bool) -> np.ndarray | None:
    """A 256-entry uint8 table raw mask value -> label, or None when masks are used as they are.

    Binary: 0 and 2..127 -> 0, 1 and 128..255 -> 1 (0/255 masks, 0/1 masks, and grey values that
    anti-aliasing or JPEG compression left near 0 or 255). ``label_map`` entries then override.
    """
    if not label_map and not binary:
        return None
    lut = np.arange(256, dtype=np.uint8)
    if binary:
        lut[:] = 0
        lut[1] = 1
        lut[128:] = 1
    for raw, label in label_map.items():
        lut[raw] = label
    return lut


def _list_images(folder: str) -> dict[str, str]:
    """Map file stem -> image path for the image files directly inside ``folder``."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_SUFFIXES or not os.path.isfile(os.path.join(folder, name)):
            continue
        if stem in found:
            raise file_error(
                DataError, os.path.join(folder, name), f"two images share the stem {stem!r} (also {found[stem]})"
            )
        found[stem] = os.path.join(folder, name)
    return found


def _match_stems(
    stems: Sequence[str], images: Mapping[str, str], image_dir: str, mask_dir: str, listed_in: str
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(image, mask) pairs of ``stems`` and the problem lines of their absent files, path -> line.

    A stem without an image keeps its place as ``<image_dir>/<stem>.*``, so the data check names it
    next to every other bad file instead of the dataset stopping at the first.
    """
    samples, absent = [], {}
    for stem in stems:
        image, mask = images.get(stem, os.path.join(image_dir, stem + ".*")), os.path.join(mask_dir, stem + ".png")
        if stem not in images:
            absent[image] = f"{listed_in}: lists {stem!r} but there is no image {image}"
        elif not os.path.isfile(mask):
            absent[mask] = f"{mask}: no mask found for image {image}"
        samples.append((image, mask))
    return samples, absent


class FolderDataset(SegmentationDataset):
    """Images and masks matched by file stem, classes from ``classes.yaml`` (see module docstring).

    ``classes`` (same forms as the file) overrides the classes file. RGB masks are mapped to
    class indices through the class colours; ``ignore_color`` (here or in the file) maps to 255.
    RGB masks with equal channels (grey saved as RGB) are read as grey. ``binary_masks=True``
    (``--binary-masks``) reads 0/255 masks as background/foreground, as ``binary: true`` does.
    """

    def __init__(
        self,
        root: PathLike,
        split: str | None = None,
        classes: Any = None,
        transform: Transform | None = None,
        ignore_color: Color | None = None,
        binary_masks: bool = False,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise file_error(DataError, root, "dataset folder not found")
        spec, self.classes_source = self._load_classes(root, classes, binary_masks)
        if ignore_color is not None:
            ignore_color = _parse_color(list(ignore_color), "ignore_color argument", "ignore_color")
        else:
            ignore_color = spec.ignore_color
        image_dir, mask_dir, stems, split_file = self._resolve_split(root, split)
        if not os.path.isdir(image_dir):
            raise file_error(DataError, image_dir, "images folder not found")
        images = _list_images(image_dir)
        if stems is None:
            stems = list(images)
        if not stems:
            raise file_error(DataError, split_file or image_dir, "no images found")
        samples, absent = _match_stems(stems, images, image_dir, mask_dir, split_file or image_dir)
        fallback = color_palette(len(spec.names))
        palette = [c if c is not None else fallback[i] for i, c in enumerate(spec.colors)]
        super().__init__(samples, spec.names, palette, transform, label_lut=label_lut(spec.label_map, spec.binary))
        self.missing.update(absent)  # reported by the data check with every other bad file, not here
        self.root, self.split = root, split
        self.binary, self.label_map = spec.binary, dict(spec.label_map)
        self.color_to_label: dict[Color, int] | None = None
        if any(c is not None for c in spec.colors):
            self.color_to_label = {c: i for i, c in enumerate(spec.colors) if c is not None}
            if ignore_color is not None:
                self.color_to_label[ignore_color] = self.ignore_index

    @staticmethod
    def _load_classes(root: str, classes: Any, binary: bool) -> tuple[ClassSpec, str]:
        """The parsed classes (argument, else the classes file; ``binary`` forces binary mode) and their source."""
        if classes is not None:
            source, content = "classes argument", classes
        else:
            source = next((os.path.join(root, n) for n in CLASS_FILES if os.path.isfile(os.path.join(root, n))), None)
            if source is None and binary:
                return parse_class_spec({"binary": True}, "--binary-masks"), "--binary-masks"
            if source is None:
                raise file_error(
                    DataError,
                    os.path.join(root, "classes.yaml"),
                    "classes file not found; add one listing the classes in label order, "
                    "e.g. '- {name: background, color: [0, 0, 0]}' (or pass --binary-masks "
                    "for 0/255 masks)",
                )
            content = _load_file(source)
        if binary:  # --binary-masks: as if the file said `binary: true`
            has_options = isinstance(content, dict) and any(k in content for k in OPTION_KEYS)
            content = {**content, "binary": True} if has_options else {"classes": content, "binary": True}
        return parse_class_spec(content, source), source

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
        raise file_error(
            DataError,
            os.path.join(root, "splits", f"{split}.txt"),
            f"split file not found (also looked for {root}/{split}.txt and {root}/{split}/images/)",
        )

    def read_mask(self, mask_path: str) -> np.ndarray:
        """(H, W) uint8 labels: colour masks through the class colours, index masks through ``map``/binary."""
        with _open_loaded(mask_path) as img:
            raw = _mask_from_pil(img, mask_path)
            if raw is None:
                rgb = np.asarray(img.convert("RGB"))
                if self.color_to_label is not None:
                    return colors_to_labels(rgb, self.color_to_label, mask_path)
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise file_error(
                        DataError,
                        mask_path,
                        f"mask is a colour ({img.mode}) image; expected a "
                        "single-channel PNG of class indices, or class colours in classes.yaml",
                    )
                raw = np.ascontiguousarray(rgb[..., 0])  # grey saved as RGB
        if not self.binary and IGNORE not in self.label_map:
            self._refuse_binary_mask(raw, mask_path)
        return self.label_lut[raw] if self.label_lut is not None else raw

    def _refuse_binary_mask(self, raw: np.ndarray, mask_path: str) -> None:
        """Stop on a 0/255-only mask: read as indices it is background + ignore, nothing to learn."""
        if raw.size and raw.max() == IGNORE and raw.min() == 0 and not np.any((raw != 0) & (raw != IGNORE)):
            raise file_error(
                DataError,
                mask_path,
                "only 0 and 255, i.e. background and ignored pixels: "
                "0/255 foreground masks need --binary-masks (or `binary: true` in classes.yaml); "
                "if 255 does mean ignore, add `map: {255: ignore}`",
            )

    def label_range_message(self, bad: Sequence[int]) -> str:
        """The out-of-range message of :class:`SegmentationDataset`, plus what to change in the classes file."""
        hint = (
            "add the missing classes, map the values with a `map:` entry (e.g. `map: {"
            f"{bad[0]}: 1}}`), or pass --binary-masks for 0/255 masks"
        )
        return f"{super().label_range_message(bad)}; classes from {self.classes_source}: {hint}"
