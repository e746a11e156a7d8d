"""Fail-fast dataset checks: every sample of a split looked at before a run starts, all errors at once.

:func:`check_dataset` checks every sample in parallel worker processes and raises one
:class:`DataCheckError` listing every bad file: missing, unreadable, truncated, a mask whose size
differs from its image's, labels that are neither classes nor ignore. Images are opened and
verified with Pillow's ``verify()`` (PNG chunk CRCs: a truncated PNG is caught without a decode;
a JPEG that does not end with its end-of-image marker is decoded to decide); masks are decoded in
full through ``dataset.read_mask``, so the dataset's own label mapping applies.

Samples that pass are remembered in ``$REFINESEG_HOME/data-check/<hash>.json`` (one file per
dataset root and split) with the size and mtime of both files and a fingerprint of the label
mapping; the next check of unchanged data only stats the files, and a changed file is checked again.

:func:`scan_dataset` is the shared engine; ``refineseg check-data`` (:mod:`.stats`) runs it with a
full decode of every image and collects label statistics on the way.
"""

from __future__ import annotations

import copy
import logging
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from refineseg.data.check_cache import cache_file, fingerprint, load_cache, save_cache, stamp
from refineseg.data.datasets import SegmentationDataset
from refineseg.data.io import read_image
from refineseg.errors import DataCheckError, DataError, one_line
from refineseg.utils import distributed

log = logging.getLogger("refineseg.data")

CHUNK = 64  # samples per task sent to a worker process
VERIFY, DECODE = 1, 2  # check levels remembered in the cache: header + verify(), or a full image decode
SKIP_HINT = "fix or remove these samples, or pass --skip-data-check to train anyway"


@dataclass
class CheckResult:
    """What a check did: ``total`` samples, ``checked`` opened now, ``cached`` unchanged since a pass."""

    total: int
    checked: int = 0
    cached: int = 0
    seconds: float = 0.0
    skipped: bool = False  # nothing on disk to check (the synthetic dataset)


@dataclass
class Totals:
    """Label statistics of the scanned masks; arrays are indexed by label value 0..255."""

    samples: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # pixels per label
    images: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # masks holding it
    image_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # their pixels
    sizes: Counter = field(default_factory=Counter)  # (w, h) -> images
    label_files: dict[int, list[str]] = field(default_factory=dict)  # bad label -> masks

    def add(self, counts: np.ndarray, size: tuple[int, int] | None, bad: Sequence[int], mask_path: str) -> None:
        present = counts > 0
        self.pixels += counts
        self.images += present
        self.image_pixels[present] += int(counts.sum())
        if size is not None:
            self.sizes[size] += 1
        for label in bad:
            self.label_files.setdefault(int(label), []).append(mask_path)

    def merge(self, other: Totals) -> None:
        self.samples += other.samples
        self.pixels += other.pixels
        self.images += other.images
        self.image_pixels += other.image_pixels
        self.sizes.update(other.sizes)
        for label, files in other.label_files.items():
            self.label_files.setdefault(label, []).extend(files)


@dataclass
class Scan:
    """The outcome of :func:`scan_dataset`: counts, problem lines, failing samples, statistics."""

    result: CheckResult
    problems: list[str]
    failed: int
    totals: Totals


def on_disk(dataset: SegmentationDataset) -> bool:
    """Whether the dataset reads files (``samples`` lists them) rather than making samples in memory."""
    return len(dataset) > 0 and len(dataset.samples) == len(dataset)


def describe(dataset: SegmentationDataset) -> str:
    """E.g. ``FolderDataset split 'train' in /data/roads``, for messages."""
    split, root = getattr(dataset, "split", None), getattr(dataset, "root", None)
    return type(dataset).__name__ + (f" split {split!r}" if split else "") + (f" in {root}" if root else "")


# ----------------------------------------------------------------------------- one sample


def _jpeg_complete(path: str) -> bool:
    """Whether a JPEG ends with its end-of-image marker (FF D9), allowing trailing padding."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
        return f.read().rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def absent_line(dataset: SegmentationDataset, path: str) -> str:
    """The problem line of a sample file that does not exist: the reader's own (``missing``), else generic."""
    return getattr(dataset, "missing", {}).get(path) or f"{path}: file not found"


def _image_size(path: str, full: bool) -> tuple[int, int]:
    """(width, height) of an image, after ``verify()`` or, with ``full``, a full decode; DataError if bad."""
    if not full:
        try:
            with Image.open(path) as img:
                size, fmt = img.size, img.format
                img.verify()
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image file (unknown or unsupported format)") from None
        except Image.DecompressionBombError as e:
            raise DataError(f"{path}: image too large ({e})") from None
        except Exception as e:  # OSError, SyntaxError, struct.error ... from a damaged file
            raise DataError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from None
        if fmt != "JPEG" or _jpeg_complete(path):
            return size
    image = read_image(path)  # full decode: raises DataError naming the file
    return image.shape[1], image.shape[0]


class _Scanner:
    """Checks samples of one dataset; sent once to every worker process (the transform left out)."""

    def __init__(self, dataset: SegmentationDataset, level: int):
        self.dataset = copy.copy(dataset)
        self.dataset.transform = None  # not needed, and may be costly to pickle
        self.level = level
        self.on_disk = on_disk(dataset)

    def read_files(
        self, image_path: str, mask_path: str
    ) -> tuple[list[str], tuple[int, int] | None, np.ndarray | None]:
        """(problem lines, image size, mask) of one sample's files; an absent file is named, not opened."""
        found = {p: os.path.exists(p) for p in (image_path, mask_path)}  # one entry when both are one file
        problems, size, mask = [absent_line(self.dataset, p) for p, ok in found.items() if not ok], None, None
        if found[image_path]:
            try:
                size = _image_size(image_path, self.level >= DECODE)
            except DataError as e:
                problems.append(one_line(e))
        if found[mask_path]:
            try:
                mask = np.asarray(self.dataset.read_mask(mask_path))
            except DataError as e:
                problems.append(one_line(e))
            except Exception as e:  # a custom reader's own failure is still a problem of this file
                problems.append(f"{mask_path}: cannot read mask ({type(e).__name__}: {one_line(e)})")
        return problems, size, mask

    def inspect(self, index: int, totals: Totals) -> list[str]:
        """The problem lines of sample ``index`` (empty when it passes); adds its labels to ``totals``."""
        ds, problems, size, mask = self.dataset, [], None, None
        if self.on_disk:
            image_path, mask_path = ds.samples[index]
            problems, size, mask = self.read_files(image_path, mask_path)
        else:
            image_path = mask_path = ds.sample_name(index)
            try:
                image, mask = ds.load_sample(index)
                size = (image.shape[1], image.shape[0])
            except Exception as e:
                problems.append(f"{image_path}: cannot load sample ({type(e).__name__}: {one_line(e)})")
        if mask is None:
            return problems
        if mask.ndim != 2:
            return problems + [f"{mask_path}: mask has shape {mask.shape}, expected (H, W)"]
        if size is not None and (mask.shape[1], mask.shape[0]) != size:
            problems.append(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is {size[0]}x{size[1]}"
            )
        if mask.dtype != np.uint8:
            if not np.issubdtype(mask.dtype, np.integer) or (mask.size and (mask.min() < 0 or mask.max() > 255)):
                return problems + [f"{mask_path}: mask of {mask.dtype} is not class indices in 0..255"]
            mask = mask.astype(np.uint8)
        counts = np.bincount(mask.ravel(), minlength=256)
        labels = np.flatnonzero(counts)
        bad = labels[(labels >= ds.num_classes) & (labels != ds.ignore_index)].tolist()
        if bad:  # the dataset's own message: a folder dataset adds what to change in classes.yaml
            problems.append(f"{mask_path}: {ds.label_range_message(bad)}")
        totals.add(counts, size, bad, mask_path)
        return problems

    def run(self, indices: Sequence[int]) -> tuple[list[int], list[tuple[int, str]], Totals]:
        """(passed indices, (index, problem) pairs, statistics) of a chunk of samples."""
        passed, problems, totals = [], [], Totals(samples=len(indices))
        for index in indices:
            found = self.inspect(index, totals)
            if found:
                problems += [(index, p) for p in found]
            else:
                passed.append(index)
        return passed, problems, totals


_WORKER: _Scanner | None = None


def _init_worker(scanner: _Scanner) -> None:
    global _WORKER
    _WORKER = scanner


def _run_chunk(indices: list[int]) -> tuple[list[int], list[tuple[int, str]], Totals]:
    return _WORKER.run(indices)


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _results(scanner: _Scanner, chunks: list[list[int]], workers: int):
    """Each chunk's ``scanner.run`` result: in this process, or from worker processes as they finish."""
    if workers <= 1:
        yield from map(scanner.run, chunks)
        return
    # fork: no re-import of torch per worker; the workers use only PIL and numpy.
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(scanner,)) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
        try:
            yield from (future.result() for future in as_completed(futures))
        except BaseException:  # an error or Ctrl-C: drop the queued chunks instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _run_all(
    scanner: _Scanner, indices: list[int], workers: int | None, desc: str
) -> tuple[list[int], list[tuple[int, str]], Totals]:
    """Scan ``indices`` in chunks, in-process (workers 0/1, few samples) or on worker processes."""
    workers = min(default_workers() if workers is None else workers, math.ceil(len(indices) / 8))
    size = CHUNK if workers <= 1 else max(1, min(CHUNK, math.ceil(len(indices) / (4 * workers))))
    chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
    passed, problems, totals = [], [], Totals()
    with tqdm(
        total=len(indices), desc=desc or "check data", unit="img", disable=None if len(indices) >= 256 else True
    ) as bar:
        for p, q, t in _results(scanner, chunks, workers):
            passed += p
            problems += q
            totals.merge(t)
            bar.update(t.samples)
    return passed, problems, totals


# ----------------------------------------------------------------------------- public


def scan_dataset(
    dataset: SegmentationDataset,
    *,
    full_decode: bool = False,
    use_cache: bool = True,
    update_cache: bool = True,
    workers: int | None = None,
    desc: str = "",
) -> Scan:
    """Check the dataset's samples and collect label statistics of those read; never raises for bad data.

    ``use_cache``: skip samples unchanged since they passed (statistics then cover only the others);
    ``update_cache``: remember the samples that pass. ``workers``: processes (default: all cores;
    0 or 1: this process). An in-memory dataset (synthetic) is read through ``load_sample``.
    """
    start = time.perf_counter()
    level = DECODE if full_decode else VERIFY
    files = on_disk(dataset)
    path, context = (cache_file(dataset), fingerprint(dataset)) if files and (use_cache or update_cache) else (None, "")
    entries = load_cache(path, context) if path is not None else {}
    todo, stamps, problems, cached = [], {}, [], 0
    for index in range(len(dataset)):
        if not files:
            todo.append(index)
            continue
        image_path, mask_path = dataset.samples[index]
        image_stamp, mask_stamp = stamp(image_path), stamp(mask_path)
        if image_stamp is None or mask_stamp is None:  # absent: named by the scan, with the other file checked
            todo.append(index)
            continue
        stamps[index] = [mask_path, *image_stamp, *mask_stamp]
        entry = entries.get(image_path)
        if use_cache and entry is not None and entry[:5] == stamps[index] and entry[5] >= level:
            cached += 1
        else:
            todo.append(index)
    passed, found, totals = _run_all(_Scanner(dataset, level), todo, workers, desc) if todo else ([], [], Totals())
    problems += found
    if path is not None and update_cache and (passed or problems):
        kept = {dataset.samples[i][0] for i in stamps}
        fresh = {image: entry for image, entry in entries.items() if image in kept}
        for index, _ in problems:
            fresh.pop(dataset.samples[index][0], None)
        fresh.update({dataset.samples[i][0]: stamps[i] + [level] for i in passed if i in stamps})
        save_cache(path, context, fresh)
    problems.sort()
    result = CheckResult(total=len(dataset), checked=len(todo), cached=cached, seconds=time.perf_counter() - start)
    return Scan(result, [p for _, p in problems], len({i for i, _ in problems}), totals)


def check_dataset(
    dataset: SegmentationDataset,
    *,
    workers: int | None = None,
    cache: bool = True,
    full_decode: bool = False,
    desc: str = "",
    hint: str = "",
) -> CheckResult:
    """Check every sample of ``dataset``; raise one :class:`DataCheckError` listing every problem.

    Skipped (``skipped=True``) for datasets made in memory. See :func:`scan_dataset` for the options.
    """
    if not on_disk(dataset):
        return CheckResult(total=len(dataset), skipped=True)
    scan = scan_dataset(
        dataset,
        full_decode=full_decode,
        use_cache=cache,
        update_cache=cache,
        workers=workers,
        desc=desc or f"check {getattr(dataset, 'split', None) or 'data'}",
    )
    if scan.problems:
        raise DataCheckError(scan.problems, scan.failed, len(dataset), describe(dataset), hint)
    return scan.result


def check_missing(datasets: Sequence[SegmentationDataset]) -> None:
    """Raise one :class:`DataCheckError` naming every file of ``datasets`` that the readers found
    missing (``missing``) and that is still absent; no file is opened. Run even with --skip-data-check:
    such a sample could only fail later, in the middle of a run."""
    problems, failed, total, names = [], 0, 0, []
    for ds in {id(ds): ds for ds in datasets}.values():
        absent = {p: line for p, line in getattr(ds, "missing", {}).items() if not os.path.exists(p)}
        if absent:
            pairs = [[p for p in dict.fromkeys(pair) if p in absent] for pair in ds.samples]
            problems += [absent[p] for pair in pairs for p in pair]
            failed, total, names = failed + sum(bool(pair) for pair in pairs), total + len(ds), names + [describe(ds)]
    if problems:
        hint = "add the missing files or take their samples out of the split (--skip-data-check does not skip this)"
        raise DataCheckError(list(dict.fromkeys(problems)), failed, total, ", ".join(names), hint)


def check_before_run(
    datasets: Sequence[SegmentationDataset], *, skip: bool = False, workers: int | None = None
) -> list[CheckResult]:
    """What ``train`` and ``evaluate`` run first: check the splits in use, raise one error for all of them.

    Under torch.distributed only rank 0 checks (its workers use the machine's cores); the other
    ranks wait in an all-reduce that tells them whether it failed, and then raise a DataError too,
    so every rank stops before the first step. The same samples listed twice are checked once.
    ``skip`` (``--skip-data-check``) opens no file but still stops on files the readers found missing.
    """
    if skip:
        check_missing(datasets)
        return []
    unique = []
    for ds in datasets:
        if on_disk(ds) and not any(type(ds) is type(u) and ds.samples == u.samples for u in unique):
            unique.append(ds)
    results, problems, failed, error = [], [], 0, None
    if distributed.rank() == 0:
        try:
            for ds in unique:
                try:
                    results.append(check_dataset(ds, workers=workers))
                    r = results[-1]
                    log.info(
                        "data check: %s: %d samples, %d checked, %d unchanged since they passed (%.1f s)",
                        describe(ds),
                        r.total,
                        r.checked,
                        r.cached,
                        r.seconds,
                    )
                except DataCheckError as e:
                    problems, failed = problems + e.problems, failed + e.failed
            if problems:
                what = ", ".join(describe(ds) for ds in unique)
                error = DataCheckError(problems, failed, sum(len(ds) for ds in unique), what, SKIP_HINT)
        except BaseException as e:  # any failure on rank 0 must release the other ranks
            error = e
    if distributed.any_process(error is not None, _sync_device()):
        raise error if error is not None else DataError("the data check failed on rank 0 (see its error)")
    return results


def _sync_device():
    """Where the all-reduce tensor lives: this process's GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return "cpu"
