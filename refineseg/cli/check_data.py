"""``refineseg check-data``: check every image and mask, count the labels, write data_report.json.

Writes ``OUT/data_report.json`` (layout in :mod:`refineseg.data.stats`) and
``OUT/class_frequencies.png``, prints a table, and exits 2 (:class:`~refineseg.errors.DataCheckError`)
when any sample is bad, naming every bad file at once.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refineseg.cli.common import dataclass_command
from refineseg.data.build import DATASETS, build_dataset
from refineseg.data.check import describe
from refineseg.data.stats import dataset_statistics
from refineseg.errors import DataCheckError, MissingDependencyError
from refineseg.report.visualize import model_table, plot_class_frequencies
from refineseg.utils.config import build_config, option, required
from refineseg.utils.files import write_text


@dataclass
class CheckDataConfig:
    """Everything ``refineseg check-data`` needs; one CLI flag / YAML key per field."""

    dataset: str = required("dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    split: list[str] = option(["train"], "split(s) to check; statistics are summed over them")
    out: str = option("runs/data_check", "output directory for data_report.json and class_frequencies.png")
    workers: int | None = option(None, "worker processes (default: all CPU cores; 0: in this process)")
    log_scale: bool = option(True, "logarithmic y axis in class_frequencies.png (rare classes stay visible)")
    binary_masks: bool = option(
        False,
        "folder dataset: masks are 0/255 background/foreground "
        "(0 -> 0; 1 and 128..255 -> 1), as `binary: true` in classes.yaml",
    )

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


def statistics_table(report: dict[str, Any]) -> str:
    """Markdown table of the classes: pixels, share of labelled pixels (%), images."""
    rows = [
        {
            "#": c["index"],
            "class": c["name"],
            "pixels": c["pixels"],
            "share %": 100.0 * c["share"],
            "images": c["images"],
        }
        for c in report["classes"]
    ]
    return model_table(rows, ["#", "class", "pixels", "share %", "images"])


def run_check_data(config: CheckDataConfig) -> dict[str, Any]:
    """``refineseg check-data``: report, chart and table; raise DataCheckError if any sample is bad."""
    folder = {"binary_masks": config.binary_masks}
    datasets = [build_dataset(config.dataset, config.data_root, split, **folder) for split in config.split]
    stats = dataset_statistics(datasets, workers=config.workers)
    root = getattr(datasets[0], "root", None) or config.data_root
    report = {
        "dataset": config.dataset,
        "root": None if root is None else str(root),
        "splits": list(config.split),
        **stats,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "data_report.json", json.dumps(report, indent=2) + "\n")
    print(statistics_table(report))
    sizes = report["image_sizes"]
    print(
        f"{report['num_samples']} samples ({config.dataset} {'+'.join(config.split)}), "
        f"ignore {100 * report['ignore_share']:.2f}% of mask pixels, "
        f"{sizes['distinct']} image size(s) from {sizes['min']} to {sizes['max']} (width, height)"
    )
    for entry in report["out_of_range"]:
        print(
            f"label {entry['label']} is not a class: {entry['pixels']:,} pixels in {len(entry['files'])} file(s), "
            f"e.g. {entry['files'][0]}"
        )
    print(f"Report: {out / 'data_report.json'}")
    try:
        png = plot_class_frequencies(
            report,
            datasets[0].palette,
            out / "class_frequencies.png",
            title=f"{config.dataset} {'+'.join(config.split)}: class pixel frequencies "
            f"({report['num_samples']} images)",
            log_scale=config.log_scale,
        )
        print(f"Class frequencies: {png}")
    except MissingDependencyError as e:
        print(f"Skipped class_frequencies.png: {e}")
    if report["problems"]:
        raise DataCheckError(
            report["problems"],
            report["failed_samples"],
            report["num_samples"],
            ", ".join(describe(ds) for ds in datasets),
        )
    return report


def _run(args: argparse.Namespace) -> None:
    run_check_data(build_config(CheckDataConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(
        sub,
        "check-data",
        "check every image and mask of a dataset (full decode) and count "
        "labels: table, data_report.json, class_frequencies.png",
        CheckDataConfig,
        _run,
    )
