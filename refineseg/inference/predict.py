"""Segment image files with a saved model: the pieces ``refineseg predict`` is built from.

Each piece takes explicit arguments, so a library user (and ``refineseg serve``) predicts files
without the command line::

    paths = expand_inputs(["photos/", "scans/**/*.png"])     # + paths.problems: unreadable links
    model = load_predictor(options)                          # options: checkpoint, backend, device ...
    for path, name in zip(paths, output_names(paths, out)):
        label_path, overlay_path = output_paths(path, name, out)
        predict_file(model, path, label_path, overlay_path, options=options)

:func:`predict_file` writes ``<name>.png``, a palette PNG of class indices (viewers show the class
colours, readers get the indices back), and optionally ``<name>_overlay.png``, the photo with the
coloured labels blended over it and a legend of the classes present; each file goes to a
temporary name and is renamed, so an interrupted write never leaves a truncated file.
:func:`is_input_failure` tells a bad input (report it, go on) from a failure that stops a batch
(full disk, permissions), and :func:`failure_line` words it as ``<input>: <cause>``.

The command (its config, the loop over the inputs, ``errors.txt``, ``manifest.csv``, the summary,
sharding under torchrun) is :mod:`refineseg.cli.predict`.

Output names (:func:`output_names`)
-----------------------------------
An input's outputs are named after its stem: ``photo.jpg`` -> ``photo.png`` + ``photo_overlay.png``.
When several inputs share a stem (compared case-insensitively, so the outputs also stay apart on
case-insensitive file systems), every one of them gets a longer name, whatever their order:

1. the stem and the extension, when their extensions differ: ``photo.jpg``, ``photo.png`` ->
   ``photo_jpg``, ``photo_png``;
2. else the folders from their common folder down, joined by ``__``: ``a/x.png``, ``b/x.png`` ->
   ``a__x``, ``b__x`` (an input in the common folder itself keeps its stem);
3. else both: ``a__x_png``, ``a__x_jpg``, ``b__x_png``.

A name whose files are still taken (by an earlier input, or by an input file that lives in the
output folder, which is never overwritten) gets ``_1``, ``_2`` ... in input order.

Input expansion (:func:`expand_inputs`)
----------------------------------------
Walks never loop: a glob's ``**`` enters each folder once and does not follow a symlink back into
a folder it is walking (that link is returned in ``problems``), and it stops
:data:`MAX_WALK_DEPTH` folders down. Folders are not recursive. A symlink loop or a broken
symlink to an image name found in a folder or by a pattern is returned in ``problems`` rather than
dropped, so a batch reports it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

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
from refineseg.inference.tiling import predict_tiled, preview
from refineseg.models import from_pretrained
from refineseg.report.visualize import overlay
from refineseg.utils.device import select_device
from refineseg.utils.files import is_write_failure

PREVIEW_SIDE = 4096  # overlays of tiled predictions are drawn at most this large
MAX_WALK_DEPTH = 64  # a glob's ``**`` goes at most this many folders down
OVERLAY_TAIL = "_overlay.png"  # <name>_overlay.png next to the label map <name>.png
_MAGIC = re.compile(r"[*?[]")  # what makes an input a glob pattern (glob.has_magic)


class Inputs(list):
    """The image paths of :func:`expand_inputs` (a ``list`` of Paths), plus ``problems``:
    ``(path, cause)`` of folder or pattern entries that cannot be read (symlink loops, broken links)."""

    def __init__(self, paths: Iterable[Path] = (), problems: Iterable[tuple[Path, str]] = ()) -> None:
        super().__init__(paths)
        self.problems: list[tuple[Path, str]] = list(problems)


def _is_image(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def link_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read when it is a symlink loop, or a broken symlink with an image name; else None."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if os.path.islink(path) and os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
    return None


def _names(folder: str) -> list[str]:
    """The entries of ``folder`` ('' is the current folder), sorted; [] when it cannot be listed."""
    try:
        return sorted(os.listdir(folder or os.curdir))
    except OSError:
        return []


def _walk(root: str, problems: list[tuple[Path, str]]) -> Iterator[str]:
    """``root`` and the folders below it (not hidden ones, as glob), each once, at most
    :data:`MAX_WALK_DEPTH` down; a link back to a folder on the way is reported in ``problems``."""
    seen: set[tuple[int, int]] = set()
    stack = [(root, {}, 0)]  # (folder, {identity: path} of the folders above it and itself, depth)
    while stack:
        folder, above, depth = stack.pop()
        try:
            info = os.stat(folder or os.curdir)
        except OSError:
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in above:
            problems.append((Path(folder), f"symlink loop: leads back to {above[identity] or os.curdir}; not followed"))
            continue
        if identity in seen:  # a second way into a folder already walked: same files
            continue
        seen.add(identity)
        yield folder
        subfolders = [os.path.join(folder, n) for n in _names(folder) if not n.startswith(".")]
        subfolders = [s for s in subfolders if os.path.isdir(s)]
        if subfolders and depth >= MAX_WALK_DEPTH:
            problems.append((Path(folder), f"more than {MAX_WALK_DEPTH} folders deep; not walked further"))
            continue
        stack.extend((s, {**above, identity: folder}, depth + 1) for s in reversed(subfolders))


def _match(folder: str, parts: list[str], found: list[str], problems: list[tuple[Path, str]]) -> None:
    """Append the paths below ``folder`` that match the pattern components ``parts`` to ``found``."""
    part, rest = parts[0], parts[1:]
    if part == "**":
        for sub in _walk(folder, problems):
            if rest:
                _match(sub, rest, found, problems)
            else:
                found.extend(os.path.join(sub, n) for n in _names(sub) if not n.startswith("."))
        return
    if _MAGIC.search(part):
        names = [n for n in _names(folder) if fnmatch.fnmatch(n, part) and (part[0] == "." or n[0] != ".")]
    else:
        names = [part] if os.path.lexists(os.path.join(folder, part)) else []
    for name in names:
        path = os.path.join(folder, name)
        if not rest:
            found.append(path)
        elif os.path.isdir(path):
            _match(path, rest, found, problems)


def glob_paths(pattern: str, problems: list[tuple[Path, str]]) -> list[str]:
    """``sorted(glob.glob(pattern, recursive=True))`` without loops: see :func:`_walk`."""
    parts = [p for p in pattern.split(os.sep) if p]
    root = os.sep if pattern.startswith(os.sep) else ""
    while len(parts) > 1 and not _MAGIC.search(parts[0]):
        root = os.path.join(root, parts.pop(0))
    found: list[str] = []
    if parts:
        _match(root, parts, found, problems)
    return sorted(set(found))


def _expand_one(item: str) -> tuple[list[str], list[tuple[Path, str]]]:
    """The images of one input (file, folder or pattern) and its unreadable entries; DataError when it has neither."""
    problems: list[tuple[Path, str]] = []
    if os.path.isdir(item):
        matches = [os.path.join(item, n) for n in _names(item)]
        nothing = f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
    elif os.path.isfile(item):
        return [item], []
    elif _MAGIC.search(item):
        matches = glob_paths(item, problems)
        nothing = "pattern matches no image files"
    else:
        raise file_error(DataError, item, link_problem(item) or "file not found")
    images = [m for m in matches if _is_image(m)]
    problems += [(Path(m), cause) for m in matches if not _is_image(m) and (cause := link_problem(m))]
    if not images and not problems:
        raise file_error(DataError, item, nothing)
    return images, problems


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> Inputs:
    """Turn files, folders and glob patterns into the list of image paths (see the module docstring).

    Files are kept as given (whatever their suffix: reading them reports non-images); folders give
    their image files, sorted, not recursive; patterns work like ``glob.glob(recursive=True)``,
    sorted, keeping the image files they match. Duplicates are dropped, first occurrence kept.
    Symlink loops and broken links met on the way are in ``.problems``. Raises DataError for an
    input that matches nothing, or when there are no inputs at all.
    """
    found = Inputs()
    seen: set[str] = set()
    for item in inputs:
        images, problems = _expand_one(os.fspath(item))
        for path, cause in problems:
            if all(path != known for known, _ in found.problems):
                found.problems.append((path, cause))
        for match in images:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                found.append(Path(match))
    if not found and not found.problems:
        raise DataError("no input images given")
    return found


def _output_files(name: str) -> set[str]:
    """The files an input named ``name`` may write, case-folded."""
    return {f"{name}{tail}".casefold() for tail in (".png", ".tif", OVERLAY_TAIL)}


def _distinct(names: list[str]) -> bool:
    return len({n.casefold() for n in names}) == len(names)


def _names_apart(paths: list[Path]) -> list[str]:
    """Names for inputs that share a stem: steps 1-3 of the rule in the module docstring."""
    with_suffix = [f"{p.stem}_{p.suffix[1:]}" if p.suffix else p.stem for p in paths]
    if _distinct(with_suffix):
        return with_suffix
    parents = [os.path.abspath(p.parent) for p in paths]
    common = os.path.commonpath(parents)
    folders = [os.path.relpath(parent, common) for parent in parents]
    by_folder = [p.stem if f == os.curdir else f"{f.replace(os.sep, '__')}__{p.stem}" for f, p in zip(folders, paths)]
    if _distinct(by_folder):
        return by_folder
    return [f"{n}_{p.suffix[1:]}" if p.suffix else n for n, p in zip(by_folder, paths)]


def output_names(paths: Sequence[Path], out: str | os.PathLike | None = None) -> list[str]:
    """The output name of each input (``<name>.png``, ``<name>_overlay.png``), by the rule in the
    module docstring. Depends only on ``paths`` and what they are, so every run (and every torchrun
    process) names the same inputs alike. Inputs that live in ``out`` are never overwritten."""
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(path.stem.casefold(), []).append(i)
    wanted = [path.stem for path in paths]
    for members in groups.values():
        if len(members) > 1:
            for i, name in zip(members, _names_apart([paths[i] for i in members])):
                wanted[i] = name
    real_out = os.path.realpath(out) if out is not None else None
    taken = {p.name.casefold() for p in paths if os.path.realpath(p.parent) == real_out}
    names = []
    for candidate in wanted:
        name, k = candidate, 0
        while not taken.isdisjoint(_output_files(name)):
            k += 1
            name = f"{candidate}_{k}"
        taken |= _output_files(name)
        names.append(name)
    return names


def output_paths(
    path: Path, name: str, out: str | os.PathLike, tiled: bool = False, overlay: bool = True
) -> tuple[Path, Path | None]:
    """(label file, overlay file or None) of input ``path`` named ``name``; tiled TIFF inputs get TIFF label maps."""
    out = Path(out)
    suffix = ".tif" if tiled and path.suffix.lower() in TIFF_SUFFIXES else ".png"
    return out / f"{name}{suffix}", (out / f"{name}{OVERLAY_TAIL}" if overlay else None)


def load_predictor(options: InferenceOptions):
    """A callable ``(N, 3, H, W) -> logits`` with ``.config``: a (fast-path) model or an ONNX session.

    ``options``: inference options with ``checkpoint`` and ``backend`` fields (the configs of
    ``refineseg predict`` and ``refineseg serve``); the model runs on ``options.device``.
    """
    if options.backend == "onnxruntime":
        from refineseg.inference.export import OnnxSegmenter

        return OnnxSegmenter(options.checkpoint)
    return options.prepare(from_pretrained(options.checkpoint, map_location=select_device(options.device)))


def predict_file(
    model,
    path: Path,
    label_path: Path,
    overlay_path: Path | None = None,
    *,
    options: InferenceOptions | None = None,
    tile: int | None = None,
    overlap: int = 128,
    tile_batch: int = 1,
    alpha: float = 0.5,
) -> None:
    """Segment one image file and write its label map (+ overlay), each atomically.

    ``options`` give the inference mode (default: whole image). With ``tile``, tiled mode reads
    the image with the decompression-bomb limit lifted (TIFFs memory-mapped when uncompressed) and
    draws the overlay on a preview no larger than ``PREVIEW_SIDE``.
    """
    if tile:
        image = read_large_image(path)
        labels = predict_tiled(model, image, tile=tile, overlap=overlap, tile_batch=tile_batch)
    else:
        image = read_image(path)
        labels = segment(model, image, **(options.inference_kwargs() if options is not None else {}))
    palette = model.config.palette
    if Path(label_path).suffix == ".tif":
        write_label_tiff(label_path, labels, palette)
    else:
        write_label_png(label_path, labels, palette)
    if overlay_path is not None:
        shown_image, shown_labels = preview(image, labels, PREVIEW_SIDE) if tile else (image, labels)
        shown = overlay(shown_image, shown_labels, palette, model.config.class_names, alpha=alpha)
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
