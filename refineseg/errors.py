"""Errors that the CLI reports as a single line (``error: <file>: <cause>``) without a traceback."""

from __future__ import annotations

import os


class RefineSegError(Exception):
    """Base class for user-facing errors: bad input files, mismatched checkpoints, bad options."""


class DataError(RefineSegError):
    """A dataset, image or mask file is missing, unreadable or inconsistent."""


class CheckpointError(RefineSegError):
    """A weights file or checkpoint directory cannot be loaded into the requested model."""


def file_error(cls: type[RefineSegError], path: str | os.PathLike, cause: str) -> RefineSegError:
    """Build ``cls("<path>: <cause>")``, the one message format used for every file problem."""
    return cls(f"{os.fspath(path)}: {cause}")
