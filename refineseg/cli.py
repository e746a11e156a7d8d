"""The ``refineseg`` command line: a thin layer of argument parsing over the library.

Every user-facing error (:class:`~refineseg.errors.RefineSegError`) is printed as one line,
``error: <file>: <cause>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import RefineSegError

Handler = Callable[[argparse.Namespace], int | None]


def _cmd_models(args: argparse.Namespace) -> None:
    from .models import list_models
    from .profiling import summarize_model
    from .visualize import model_table

    names = args.names or list_models()
    rows = [summarize_model(n, args.num_classes, args.size, args.size) for n in names]
    for row in rows:
        row["GMACs"] = round(row["GMACs"], 2)
    print(model_table(rows, ["model", "params", "GMACs", "output"]))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refineseg", description="RefineNet semantic segmentation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model variants with parameters, GMACs and output shape")
    p.add_argument("names", nargs="*", help="variants to show (default: all)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, default=512, help="input side for the GMAC count (default 512)")
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser("demo", help="the demo job that `make demo` runs")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except RefineSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
