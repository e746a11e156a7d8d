"""``refineseg predict``: label PNGs and overlays for files, folders and globs; exit 3 when some failed."""

from __future__ import annotations

import argparse

from refineseg.cli.common import dataclass_command
from refineseg.inference.predict import PredictConfig, run_predict
from refineseg.utils.config import build_config


def _run(args: argparse.Namespace) -> int:
    """0, or 3 (EXIT_SOME_FAILED) when some inputs failed: they are listed in OUT/errors.txt."""
    return run_predict(build_config(PredictConfig, args, args.config)).exit_code


def register(sub) -> None:
    dataclass_command(sub, "predict", "segment images; writes label PNGs and overlays", PredictConfig, _run,
                      positional=("inputs",))
