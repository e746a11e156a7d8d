"""A run directory belongs to one run: a lock against concurrent runs, no silent reuse.

``refineseg train --out DIR``:

* takes ``DIR/.lock`` (an exclusive ``flock`` held for the whole run, the file naming the PID,
  host and start time). A second run on ``DIR`` refuses with one line naming the holder. The
  kernel drops the lock when its process dies, so a lock left by a killed run is taken over,
  with a note. Under torchrun, rank 0 holds it.
* refuses a ``DIR`` that already holds a run (``config.yaml``, ``metrics.jsonl``, checkpoints,
  TensorBoard logs) unless ``--resume`` continues it or ``--overwrite`` archives it first: the
  old run's files move, untouched, to ``DIR/../<DIR>.archived-<time>/``. Nothing is deleted.
* writes nothing into ``DIR`` before the run's checks have passed: :func:`claim_run_dir` only decides
  whether the old run must be archived, the trainer archives it after setting the run up, and a
  ``DIR`` that the lock had to create is removed again when a failed start leaves it empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from refineseg.errors import RefineSegError, file_error

log = logging.getLogger("refineseg.train")

LOCK_NAME = ".lock"
#: What marks a directory as holding a run (any of these entries).
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "last", "best", ".last.old", ".best.old", "tensorboard", "plots")

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock file alone (O_EXCL) marks the run
    fcntl = None


class RunDirBusyError(RefineSegError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on ``directory`` (``.lock`` inside it), held until :meth:`release`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # the directories acquire() made, deepest first

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirBusyError` naming the holder; notes a stale takeover."""
        directory = self.path.parent
        self._created = [d for d in (directory, *directory.parents) if not d.exists()]
        while True:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
            except FileNotFoundError:  # a failed run removed the directory it had created: make it again
                continue
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_holder(fd))
                os.close(fd)
                raise file_error(
                    RunDirBusyError,
                    self.path.parent,
                    f"in use by another run ({holder}); wait for it to end or choose another --out",
                ) from None  # a held lock is the answer, not a failure to chain
            # The file may have been unlinked by its previous holder between our open and flock.
            if os.fstat(fd).st_ino == _inode(self.path):
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            log.info("note: %s: took over the lock of a run that is gone (%s)", self.path.parent, _describe(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock, and the directories :meth:`acquire` created if they are empty (a run that failed
        to start leaves no trace)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlinked before unlocking: a waiting opener re-checks the inode
        os.close(self._fd)
        self._fd = None
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:  # not empty: the run wrote something, or another run took the directory
                break

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def run_entries(directory: str | os.PathLike) -> list[str]:
    """The entries of ``directory`` that belong to a training run (see :data:`RUN_ENTRIES`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [name for name in RUN_ENTRIES if (directory / name).exists()]
    return found + sorted(p.name for p in directory.glob("events.out.tfevents*"))


def archive_run(directory: str | os.PathLike) -> Path:
    """Move every entry of ``directory`` except its lock into a sibling ``<name>.archived-<time>``."""
    directory = Path(directory)
    archive = directory.with_name(f"{directory.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while archive.exists():
        archive = archive.with_name(f"{archive.name.split('~')[0]}~{suffix}")
        suffix += 1
    archive.mkdir()
    for entry in directory.iterdir():
        if entry.name != LOCK_NAME:
            os.replace(entry, archive / entry.name)
    return archive


def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint to resume from: ``last/``, or an interrupted swap's ``.last.old/``."""
    directory = Path(directory)
    return (directory / "last").is_dir() or (directory / ".last.old").is_dir()


def claim_run_dir(directory: str | os.PathLike, *, resume: bool | str, overwrite: bool) -> str | None:
    """Check that ``directory`` (locked by this process) may take a run; returns why its old run must be
    archived (with :func:`archive_run`, once the new run's checks have passed), or None.

    ``resume=True`` continues the run in it; ``resume="auto"`` continues it when ``last/`` holds a
    checkpoint, and otherwise archives the leftovers of a run that saved none. Without either, a
    directory holding a run is refused with a one-line error suggesting ``--resume`` or ``--overwrite``.
    Nothing is moved here, so a run that then fails to start leaves the directory as it was.
    """
    directory = Path(directory)
    found = run_entries(directory)
    if not found:
        return None
    if resume is True or (resume == "auto" and has_checkpoint(directory)):
        return None
    if overwrite or resume == "auto":
        return "--overwrite" if overwrite else "--resume auto found no checkpoint to continue"
    raise file_error(
        RefineSegError,
        directory,
        f"already holds a run ({', '.join(found[:4])}); continue it with --resume, "
        "or start over with --overwrite (moves the old run aside), or choose another --out",
    )
