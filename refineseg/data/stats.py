"""``refineseg check-data``: the data check with a full decode of every image, plus label statistics.

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

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config_utils import option, required
from ..errors import DataCheckError, MissingDependencyError
from ..files import write_text
from ..visualize import _agg_figure, model_table, save_figure
from .build import DATASETS, build_dataset
from .check import Totals, describe, scan_dataset
from .datasets import SegmentationDataset


@dataclass
class CheckDataConfig:
    """Everything ``refineseg check-data`` needs; one CLI flag / YAML key per field."""

    dataset: str = required("dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    split: list[str] = option(["train"], "split(s) to check; statistics are summed over them")
    out: str = option("runs/data_check", "output directory for data_report.json and class_frequencies.png")
    workers: int | None = option(None, "worker processes (default: all CPU cores; 0: in this process)")
    log_scale: bool = option(True, "logarithmic y axis in class_frequencies.png (rare classes stay visible)")
    binary_masks: bool = option(False, "folder dataset: masks are 0/255 background/foreground "
                                       "(0 -> 0; 1 and 128..255 -> 1), as `binary: true` in classes.yaml")

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if isinstance(self.split, str):
            self.split = [self.split]
        if not self.split:
            raise ValueError("split needs at least one split name")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.binary_masks and self.dataset != "folder":
            raise ValueError(f"binary_masks is for --dataset folder, not {self.dataset}")


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
    return {"distinct": len(sizes), "min": list(keys[0]), "max": list(keys[-1]), **ranges,
            "most_common": [{"width": w, "height": h, "images": n} for (w, h), n in common]}


def statistics_report(totals: Totals, dataset: SegmentationDataset, problems: Sequence[str]) -> dict[str, Any]:
    """The statistics part of ``data_report.json`` from summed :class:`~.check.Totals`."""
    c, ignore = dataset.num_classes, dataset.ignore_index
    labelled = int(totals.pixels[:c].sum())
    everything = int(totals.pixels.sum())
    classes = [{"index": i, "name": name, "pixels": int(totals.pixels[i]), "images": int(totals.images[i]),
                "image_pixels": int(totals.image_pixels[i]),
                "share": float(totals.pixels[i] / labelled) if labelled else 0.0}
               for i, name in enumerate(dataset.class_names)]
    out_of_range = [{"label": label, "pixels": int(totals.pixels[label]), "files": sorted(files)}
                    for label, files in sorted(totals.label_files.items())]
    ignore_pixels = int(totals.pixels[ignore]) if 0 <= ignore < len(totals.pixels) else 0
    return {"num_samples": totals.samples, "num_classes": c, "ignore_index": ignore,
            "ignore_share": ignore_pixels / everything if everything else 0.0,
            "classes": classes, "out_of_range": out_of_range, "image_sizes": _sizes_summary(totals.sizes),
            "problems": list(problems)}


def dataset_statistics(datasets: SegmentationDataset | Sequence[SegmentationDataset], workers: int | None = None,
                       *, remember: bool = True) -> dict[str, Any]:
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
        scan = scan_dataset(ds, full_decode=True, use_cache=False, update_cache=remember, workers=workers,
                            desc=f"check-data {getattr(ds, 'split', None) or ''}".strip())
        totals.merge(scan.totals)
        problems += scan.problems
        failed += scan.failed
    report = statistics_report(totals, datasets[0], problems)
    report["num_samples"] = sum(len(ds) for ds in datasets)
    report["failed_samples"] = failed
    return report


def statistics_table(report: dict[str, Any]) -> str:
    """Markdown table of the classes: pixels, share of labelled pixels (%), images."""
    rows = [{"#": c["index"], "class": c["name"], "pixels": c["pixels"], "share %": 100.0 * c["share"],
             "images": c["images"]} for c in report["classes"]]
    return model_table(rows, ["#", "class", "pixels", "share %", "images"])


def plot_class_frequencies(report: dict[str, Any], palette: Sequence[Sequence[int]], path: str | os.PathLike,
                           title: str = "", log_scale: bool = True) -> Path:
    """Bar chart of each class's share of the labelled pixels (%), bars in the class colours."""
    classes = report["classes"]
    shares = [100.0 * c["share"] for c in classes]
    fig = _agg_figure((min(40.0, max(6.4, 0.3 * len(classes) + 2.0)), 4.8))
    ax = fig.add_subplot()
    colors = [tuple(v / 255.0 for v in palette[i][:3]) for i in range(len(classes))]
    bars = ax.bar(range(len(classes)), shares, color=colors, edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(classes)), labels=[c["name"] for c in classes], rotation=90,
                  fontsize=8 if len(classes) <= 40 else 5)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    if len(classes) <= 40:
        ax.bar_label(bars, labels=[f"{s:.3g}" for s in shares], fontsize=7, padding=1)
    positive = [s for s in shares if s > 0]
    if log_scale and positive:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")  # bars start a decade below the rarest class, ticks as plain percentages
        ax.set_ylim(10.0 ** np.floor(np.log10(min(positive)) - 1), max(positive) * 2.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("class")
    ax.set_ylabel("pixels (%) of the labelled pixels")
    ax.set_title(title or "class frequencies")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)


def run_check_data(config: CheckDataConfig) -> dict[str, Any]:
    """``refineseg check-data``: report, chart and table; raise DataCheckError if any sample is bad."""
    folder = {"binary_masks": True} if config.binary_masks else {}
    datasets = [build_dataset(config.dataset, config.data_root, split, **folder) for split in config.split]
    stats = dataset_statistics(datasets, workers=config.workers)
    root = getattr(datasets[0], "root", None) or config.data_root
    report = {"dataset": config.dataset, "root": None if root is None else str(root), "splits": list(config.split),
              **stats}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "data_report.json", json.dumps(report, indent=2) + "\n")
    print(statistics_table(report))
    sizes = report["image_sizes"]
    print(f"{report['num_samples']} samples ({config.dataset} {'+'.join(config.split)}), "
          f"ignore {100 * report['ignore_share']:.2f}% of mask pixels, "
          f"{sizes['distinct']} image size(s) from {sizes['min']} to {sizes['max']} (width, height)")
    for entry in report["out_of_range"]:
        print(f"label {entry['label']} is not a class: {entry['pixels']:,} pixels in {len(entry['files'])} file(s), "
              f"e.g. {entry['files'][0]}")
    print(f"Report: {out / 'data_report.json'}")
    try:
        png = plot_class_frequencies(report, datasets[0].palette, out / "class_frequencies.png",
                                     title=f"{config.dataset} {'+'.join(config.split)}: class pixel frequencies "
                                           f"({report['num_samples']} images)", log_scale=config.log_scale)
        print(f"Class frequencies: {png}")
    except MissingDependencyError as e:
        print(f"Skipped class_frequencies.png: {e}")
    if report["problems"]:
        raise DataCheckError(report["problems"], report["failed_samples"], report["num_samples"],
                             ", ".join(describe(ds) for ds in datasets))
    return report
