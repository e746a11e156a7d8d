"""Label statistics with a full decode of every image (what ``refineseg check-data`` reports).

:func:`dataset_statistics` scans every sample (in parallel, as :mod:`.check` does) and counts, per
class, its pixels, the images holding it and the pixels of those images (what median-frequency
class weights need); also the ignore share, labels outside the classes with the files holding
them, and image sizes. :func:`run_check_data` writes ``data_report.json`` and
``class_frequencies.png``, prints a table, and exits 2 (:class:`~.check.DataCheckError`) when any
sample is bad. Samples that pass are remembered, so a following ``train`` checks nothing again.

``data_report.json``::

    {"dataset", "root", "splits", "num_samples", "num_classes", "ignore_index", "ignore_share",
     "classes": [{"index", "name", "pixels", "images", "image_pixels", "share"}, ...],
     "out_of_range": [{"label", "pixels", "files": [...]}, ...],
     "image_sizes": {"distinct", "min", "max", "width", "height", "most_common"}, "problems": [...]}

``share`` is the class's fraction of the labelled pixels (ignore and out-of-range labels left out);
``ignore_share`` is the ignore label's fraction of all mask pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refineseg.data.check import Totals, describe, scan_dataset
from refineseg.data.datasets import SegmentationDataset


def _sizes_summary(sizes: dict[tuple[int, int], int]) -> dict[str, Any]:
    """Image sizes (width, height): distinct count, smallest/largest by area, ranges, most common."""
    if not sizes:
        return {"distinct": 0, "min": None, "max": None, "width": None, "height": None, "most_common": []}
    keys = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    count = sum(sizes.values())
    ranges = {}
    for axis, name in ((0, "width"), (1, "height")):
        values = [s[axis] for s in sizes]
        mean = sum(s[axis] * n for s, n in sizes.items()) / count
        ranges[name] = {"min": min(values), "max": max(values), "mean": round(mean, 2)}
    common = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    return {
        "distinct": len(sizes),
        "min": list(keys[0]),
        "max": list(keys[-1]),
        **ranges,
        "most_common": [{"width": w, "height": h, "images": n} for (w, h), n in common],
    }


def statistics_report(totals: Totals, dataset: SegmentationDataset, problems: Sequence[str]) -> dict[str, Any]:
    """The statistics part of ``data_report.json`` from summed :class:`~.check.Totals`."""
    c, ignore = dataset.num_classes, dataset.ignore_index
    labelled = int(totals.pixels[:c].sum())
    everything = int(totals.pixels.sum())
    classes = [
        {
            "index": i,
            "name": name,
            "pixels": int(totals.pixels[i]),
            "images": int(totals.images[i]),
            "image_pixels": int(totals.image_pixels[i]),
            "share": float(totals.pixels[i] / labelled) if labelled else 0.0,
        }
        for i, name in enumerate(dataset.class_names)
    ]
    out_of_range = [
        {"label": label, "pixels": int(totals.pixels[label]), "files": sorted(files)}
        for label, files in sorted(totals.label_files.items())
    ]
    ignore_pixels = int(totals.pixels[ignore]) if 0 <= ignore < len(totals.pixels) else 0
    return {
        "num_samples": totals.samples,
        "num_classes": c,
        "ignore_index": ignore,
        "ignore_share": ignore_pixels / everything if everything else 0.0,
        "classes": classes,
        "out_of_range": out_of_range,
        "image_sizes": _sizes_summary(totals.sizes),
        "problems": list(problems),
    }


def dataset_statistics(
    datasets: SegmentationDataset | Sequence[SegmentationDataset], workers: int | None = None, *, remember: bool = True
) -> dict[str, Any]:
    """Decode and check every sample of one or several datasets (same classes); return summed statistics.

    Bad samples do not stop the scan: they are listed under ``"problems"`` (and their readable
    masks still count). ``remember``: record the samples that pass in the data-check cache.
    The returned dict is the report layout of the module docstring without dataset/root/splits.
    """
    datasets = [datasets] if isinstance(datasets, SegmentationDataset) else list(datasets)
    totals, problems, failed = Totals(), [], 0
    for ds in datasets:
        if ds.class_names != datasets[0].class_names or ds.ignore_index != datasets[0].ignore_index:
            raise ValueError(f"{describe(ds)} has other classes than {describe(datasets[0])}")
        scan = scan_dataset(
            ds,
            full_decode=True,
            use_cache=False,
            update_cache=remember,
            workers=workers,
            desc=f"check-data {getattr(ds, 'split', None) or ''}".strip(),
        )
        totals.merge(scan.totals)
        problems += scan.problems
        failed += scan.failed
    report = statistics_report(totals, datasets[0], problems)
    report["num_samples"] = sum(len(ds) for ds in datasets)
    report["failed_samples"] = failed
    return report
