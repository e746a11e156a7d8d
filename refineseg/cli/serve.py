"""``refineseg serve``: an HTTP server for a checkpoint (FastAPI + uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse

from refineseg.cli.common import dataclass_command
from refineseg.serve import ServeConfig, run_serve
from refineseg.utils.config import build_config


def _run(args: argparse.Namespace) -> int:
    """0 after a graceful stop (SIGTERM); a missing extra, a bad checkpoint or a busy port: one-line error."""
    return run_serve(build_config(ServeConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(
        sub,
        "serve",
        "serve a checkpoint over HTTP: POST /v1/segment, /healthz, /metrics, a web page at /",
        ServeConfig,
        _run,
    )
