"""The ``refineseg`` command line: a thin layer of argument parsing over the library.

Each sub-command lives in its own module of this package with a ``register(subparsers)`` function;
:data:`COMMANDS` lists them in the order ``--help`` shows. Every user-facing error
(:class:`~refineseg.errors.RefineSegError`) is printed as one line, ``error: <file>: <cause>``, with
exit status 2 and no traceback. That includes a missing optional extra
(:class:`~refineseg.errors.MissingDependencyError`, naming the pip command): the library imports
onnx, onnxruntime, matplotlib, albumentations and tifffile only inside the functions that need them,
so importing this module loads none of them. Any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from refineseg.cli import check_data, demo, evaluate, export, models, predict, report, serve, synthetic, train, zoo
from refineseg.cli.common import Handler
from refineseg.errors import DataCheckError, RefineSegError, one_line
from refineseg.utils.files import is_write_failure, write_error

#: The command modules, in ``--help`` order; each has ``register(subparsers)``.
COMMANDS = [models, zoo, train, evaluate, report, check_data, predict, export, serve, synthetic, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refineseg", description="RefineNet semantic segmentation toolkit.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except DataCheckError as e:  # every bad file, one per line (first 20, then a count)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RefineSegError as e:  # includes MissingDependencyError: the message names the pip command
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a permission problem outside the writes that report it themselves
        if not is_write_failure(e):
            raise
        print(f"error: {one_line(write_error(e.filename or '<output>', e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
