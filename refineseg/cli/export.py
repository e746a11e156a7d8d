"""``refineseg export``: a checkpoint to ONNX (dynamic batch, height and width), optionally int8."""

from __future__ import annotations

import argparse

from refineseg.cli.common import dataclass_command
from refineseg.inference.export import ExportConfig, run_export
from refineseg.utils.config import build_config


def _run(args: argparse.Namespace) -> None:
    run_export(build_config(ExportConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(sub, "export", "export a checkpoint to ONNX (dynamic batch, height and width)", ExportConfig,
                      _run)
