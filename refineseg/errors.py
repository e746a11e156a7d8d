"""Errors that the CLI reports as a single line (``error: <file>: <cause>``) without a traceback."""

from __future__ import annotations

import os


class RefineSegError(Exception):
    """Base class for user-facing errors: bad input files, mismatched checkpoints, bad options."""


class DataError(RefineSegError):
    """A dataset, image or mask file is missing, unreadable or inconsistent."""


class DataCheckError(DataError):
    """Every problem a dataset check found; ``str()`` shows a header, the first 20 lines and a count.

    The one multi-line error: the CLI prints it as it is, so a broken dataset is reported in full.
    """

    SHOWN = 20  # problem lines in the message; the rest are counted

    def __init__(self, problems, failed: int, total: int, what: str = "", hint: str = ""):
        self.problems, self.failed, self.total, self.what, self.hint = list(problems), failed, total, what, hint
        head = f"{len(self.problems)} problem(s) in {failed} of {total} samples" + (f" of {what}" if what else "")
        lines = [head + ":"] + ["  " + p for p in self.problems[: self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  ... and {len(self.problems) - self.SHOWN} more")
        super().__init__("\n".join(lines + ([hint] if hint else [])))

    def __reduce__(self):  # picklable: raised in worker processes
        return type(self), (self.problems, self.failed, self.total, self.what, self.hint)


class CheckpointError(RefineSegError):
    """A weights file or checkpoint directory cannot be loaded into the requested model."""


class WriteError(RefineSegError):
    """An output could not be written: no space left, quota, permissions (see :mod:`refineseg.utils.files`)."""


class ConfigError(RefineSegError):
    """A config value (YAML key or flag) has the wrong type or is out of range."""


class MissingDependencyError(RefineSegError):
    """An optional extra is not installed; the message names the pip command."""


def file_error(cls: type[RefineSegError], path: str | os.PathLike, cause: str) -> RefineSegError:
    """Build ``cls("<path>: <cause>")``, the one message format used for every file problem."""
    return cls(f"{os.fspath(path)}: {cause}")


def one_line(error: BaseException) -> str:
    """The error's message on one line.

    An error raised inside a DataLoader worker comes back re-wrapped with the worker's
    traceback in its message; its last line holds the original ``Type: message``.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())
