"""The state of a training run, saved crash-safely: atomic checkpoint directories and RNG states.

A checkpoint is a directory that :func:`refineseg.from_pretrained` reads (``model.safetensors``
+ ``config.json``) plus ``training_state.pt`` (optimizer, scheduler, grad scaler, RNG states,
step, best mIoU), loaded back with ``weights_only=True``. Directories are written next to their
final place and swapped in with renames, so a ``kill -9`` at any moment leaves either the old or
the new checkpoint, never a half-written one.

Preemption: while :class:`StopSignals` is active, SIGTERM, SIGINT and SIGUSR1 (what SLURM and
Kubernetes send before a kill) only ask the run to stop; the trainer finishes the optimizer
step, writes ``last/`` and exits with :data:`PREEMPTED_EXIT_CODE`. Data-loading workers ignore all
three (:func:`ignore_stop_signals`, :func:`stop_signals_blocked`), so a signal sent to the whole
process group, as SLURM's and a terminal's are, stops the run the same way.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from refineseg.errors import CheckpointError, file_error
from refineseg.utils.files import is_write_failure, write_bytes, write_error

STATE_NAME = "training_state.pt"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped early on a signal, checkpoint saved, resume me
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0


def atomic_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory with ``write(tmp_dir)`` and swap it in for ``target``.

    Sequence: write ``.NAME.tmp`` -> fsync -> rename ``NAME`` to ``.NAME.old`` -> rename tmp to
    ``NAME`` -> delete the old one. :func:`recover_directory` undoes an interrupted swap. When
    the write fails (a full disk, say), the temporary directory is removed, ``target`` is left
    as it was, and a lack of space or permission raises a one-line
    :class:`~refineseg.errors.WriteError` naming ``target``.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    recover_directory(target)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        _fsync_tree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = e if isinstance(e, OSError) else e.__cause__
        if isinstance(os_error, OSError) and is_write_failure(os_error):
            error = write_error(target, os_error, needed=_tree_bytes(target) or None)
            kept = "; the previous checkpoint is kept" if target.exists() else ""
            raise type(error)(f"{error}{kept}") from e
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through memory and :func:`~refineseg.utils.files.write_bytes`: a full disk gives an
    OSError (not torch's ``unexpected pos``) and never a truncated file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def recover_directory(target: Path) -> None:
    """After a crash mid-swap, put the previous complete checkpoint back in place."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.exists():
        os.replace(old, target)
    shutil.rmtree(target.with_name(f".{target.name}.tmp"), ignore_errors=True)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as plain tensors and numbers."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_NAME
    if not path.is_file():
        raise file_error(CheckpointError, path, "no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise file_error(CheckpointError, path, f"cannot read training state ({type(e).__name__})") from e


class StopSignals:
    """Context manager: SIGTERM, SIGINT and SIGUSR1 set :attr:`received` instead of ending the process.

    The first signal is recorded and the previous handlers are put back at once, so a second one
    acts as it would without this (a double Ctrl-C still interrupts, a second SIGTERM kills).
    Signals the process ignores stay ignored; leaving the block restores the previous handlers.
    Python runs signal handlers in the main thread only, so elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)  # Windows has no SIGUSR1
            if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
                continue
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():  # None: a handler not set from Python
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()


def _stop_signal_set() -> set[signal.Signals]:
    return {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}  # Windows has no SIGUSR1


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM, SIGINT and SIGUSR1; the training process decides.

    A scheduler's SIGTERM or a Ctrl-C reaches every process of the group; a worker that died of it
    would make the DataLoader fail the very step the training process is finishing (torch's own worker
    handler dies of any SIGTERM not sent by the parent). Setting SIG_IGN also discards a signal that
    arrived while the worker started with the signals blocked (:func:`stop_signals_blocked`); then they
    are unblocked. A worker that ignores SIGTERM cannot be ended by it, so :func:`shut_down_workers`
    kills one that does not leave when the loader tells it to.
    """
    for sig in _stop_signal_set():
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signal_set())


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGUSR1 back in this thread while it starts DataLoader workers.

    Forked workers inherit the blocked mask, so a stop signal sent to the process group as a worker
    starts stays pending until :func:`ignore_stop_signals` discards it, instead of killing the worker
    before it could ignore it. This process still gets the signal: another of its threads takes it,
    or this one when the block ends. Only the main thread blocks (elsewhere this does nothing).
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signal_set())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shut_down_workers(iterator: object) -> None:
    """End the worker processes of a DataLoader ``iterator`` now; SIGKILL any left after torch's shutdown.

    torch shuts them down when the iterator is garbage-collected, which an exception's traceback can
    delay until interpreter exit, where multiprocessing would wait forever for a worker that ignores
    SIGTERM (:func:`ignore_stop_signals`). Uses torch's private ``_workers`` / ``_shutdown_workers``
    where present; a single-process iterator has neither.
    """
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # asks each worker to leave, waits, then SIGTERMs (ignored) and waits again
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
