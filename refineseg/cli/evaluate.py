"""``refineseg evaluate``: mIoU, boundary quality and friends of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse

from refineseg.cli.common import dataclass_command
from refineseg.evaluation.evaluate import EvalConfig, run_evaluate
from refineseg.utils.config import build_config


def _run(args: argparse.Namespace) -> None:
    run_evaluate(build_config(EvalConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(sub, "evaluate", "measure mIoU and friends of a checkpoint on a dataset split", EvalConfig,
                      _run)
