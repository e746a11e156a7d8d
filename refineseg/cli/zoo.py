"""``refineseg zoo``: the trained models shipped with refineseg and their numbers (:mod:`refineseg.models.zoo`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from refineseg.models.zoo import ZooEntry, get_entry, list_zoo, verify_entry, zoo_dir
from refineseg.report.visualize import model_table

#: Metrics shown as columns (in points) when any entry has them.
COLUMNS = ("mIoU", "aAcc", "mAcc", "mBoundaryIoU")


def zoo_rows(entries: list[ZooEntry]) -> tuple[list[dict[str, Any]], list[str]]:
    """One table row per entry (metrics in points, size in MB) and the columns to show."""
    shown = [key for key in COLUMNS if any(key in e.metrics for e in entries)]
    rows = []
    for e in entries:
        weights = zoo_dir() / e.file
        row: dict[str, Any] = {
            "name": e.name,
            "model": e.model,
            "dataset": e.dataset,
            "classes": len(e.classes),
            "split": e.evaluation.get("split") or "?",
            "precision": e.precision,
            "MB": round(weights.stat().st_size / 1e6, 1) if weights.is_file() else None,
            "licence": e.licence,
        }
        row.update({key: round(100 * e.metrics[key], 2) for key in shown if key in e.metrics})
        rows.append(row)
    columns = ["name", "model", "dataset", "classes", "split", *shown, "precision", "MB", "licence"]
    return rows, columns


def run_zoo(args: argparse.Namespace) -> None:
    """Print the zoo as a table, or every field of the named entries (their files SHA-256 checked)."""
    if args.names:
        entries = [get_entry(name) for name in args.names]  # every name checked before any hashing
        for entry in entries:
            print(json.dumps(entry.to_dict(), indent=2))
            print(f"{entry.name}: {verify_entry(entry)} (SHA-256 verified)")
        return
    entries = list_zoo()
    if not entries:
        print(f"The model zoo is empty ({zoo_dir()}); benchmarks/zoo_add.py adds trained models.")
        return
    rows, columns = zoo_rows(entries)
    print(model_table(rows, columns))
    print("Metrics in % on the split shown. Load one with refineseg.from_pretrained(NAME) or --checkpoint NAME.")


def register(sub) -> None:
    p = sub.add_parser(
        "zoo",
        allow_abbrev=False,
        help="list the trained models shipped with refineseg (--checkpoint NAME) and their scores",
        description="List the model zoo: trained weights packaged with refineseg, loaded offline "
        "by name (refineseg.from_pretrained(NAME), --checkpoint NAME) after a SHA-256 "
        "check. With names, print every field of those entries: dataset, classes, "
        "recipe, commit, metrics, licence.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to show in full (default: the table of all)")
    p.set_defaults(handler=run_zoo)
