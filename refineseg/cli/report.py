"""``refineseg report`` (rebuild a report.html) and ``refineseg compare`` (two evaluations side by side)."""

from __future__ import annotations

import argparse

from refineseg.cli.common import count, side
from refineseg.report import MAX_SIDE, write_compare_report, write_report


def run_report(args: argparse.Namespace) -> None:
    path = write_report(args.run_dir, out=args.out, worst=args.worst, best=args.best, max_side=args.max_side)
    print(f"Report: {path}")


def run_compare(args: argparse.Namespace) -> None:
    path = write_compare_report(args.eval_a, args.eval_b, args.out, top=args.top, max_side=args.max_side)
    print(f"Comparison: {path}")


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="rebuild report.html of an evaluate output folder or a training run folder",
        description="Rebuild the self-contained report.html from saved outputs: an evaluate "
        "folder (metrics.json, per_image.csv, predictions/) or a training run "
        "(metrics.jsonl, last_validation.json).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html)")
    p.add_argument("--worst", type=count, default=6, help="images with the lowest mIoU to show (default 6)")
    p.add_argument("--best", type=count, default=3, help="images with the highest mIoU to show (default 3)")
    p.add_argument(
        "--max-side", type=side, default=MAX_SIDE, help=f"longer side of the pictures in px (default {MAX_SIDE})"
    )
    p.set_defaults(handler=run_report)

    p = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="side-by-side page of two evaluations: per-class deltas, images that differ most",
        description="Compare two evaluate output folders of the same dataset (written with "
        "--report or --save-predictions) in one self-contained HTML page.",
    )
    p.add_argument("eval_a", metavar="EVAL_A")
    p.add_argument("eval_b", metavar="EVAL_B")
    p.add_argument("--out", default="compare.html", help="output file (default compare.html)")
    p.add_argument("--top", type=count, default=6, help="images with the largest mIoU difference to show (default 6)")
    p.add_argument(
        "--max-side", type=side, default=MAX_SIDE, help=f"longer side of the pictures in px (default {MAX_SIDE})"
    )
    p.set_defaults(handler=run_compare)
