"""Progress for long commands, and third-party chatter kept out of sight.

* :class:`Steps`: a few long steps (``export``: tracing, validation, quantization). On a terminal a
  tqdm bar over the steps whose elapsed time ticks every second; without one, a line when a step
  starts, one every ``interval`` seconds while it runs, and one when it ends. While a step runs,
  what other libraries print is captured (see :class:`Captured`) unless ``verbose``; when the step
  fails, the captured text is shown before the error.
* :func:`progress`: an iterable with a bar (or, without a terminal, a line every ``interval`` s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

INTERVAL_S = 10.0  # without a terminal: a progress line this often while a step runs


def stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file descriptor
        return False


class Captured:
    """While active, everything written to stdout and stderr goes to a temporary file instead.

    Covers Python-level writes (``print``, log handlers writing to ``sys.stdout`` / ``sys.stderr``),
    C-level writes to file descriptors 1 and 2 (onnxruntime's, PyTorch's), log records of every
    logger (the root logger's handlers are swapped for one writing to the file) and warnings.
    ``text()`` returns what was captured.
    """

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (read after the capture ends)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Captured:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(self.file.fileno(), fd)
        self._stack.callback(self._restore, saved)
        stream = open(self.file.fileno(), "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        self._stack.callback(stream.close)
        self._stack.enter_context(contextlib.redirect_stdout(stream))
        self._stack.enter_context(contextlib.redirect_stderr(stream))
        root = logging.getLogger()
        handlers, root.handlers = root.handlers, [logging.StreamHandler(stream)]
        self._stack.callback(setattr, root, "handlers", handlers)
        self._stack.enter_context(warnings.catch_warnings())  # the filters stay; only where warnings go changes
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stream.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        return self

    @staticmethod
    def _restore(saved: dict[int, int]) -> None:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def text(self) -> str:
        self.file.seek(0)
        return self.file.read().decode("utf-8", errors="replace")


def _terminal_stream() -> IO[str]:
    """Where progress goes: a copy of the current stderr, so that a later capture does not swallow it."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError):
        return sys.stderr  # an object without a file descriptor (e.g. redirected to a StringIO)


class Steps:
    """Progress over named steps, each run in ``with steps.step(name):``; see the module docstring."""

    def __init__(
        self,
        names: list[str],
        desc: str,
        verbose: bool = False,
        interval: float = INTERVAL_S,
        terminal: bool | None = None,
    ) -> None:
        self.names, self.desc, self.verbose, self.interval = names, desc, verbose, interval
        self.terminal = stderr_is_terminal() if terminal is None else terminal
        self.out = _terminal_stream()
        self.bar = tqdm(
            total=len(names),
            desc=desc,
            file=self.out,
            disable=not self.terminal,
            dynamic_ncols=True,
            bar_format="{desc}: {n}/{total} steps |{bar}| {elapsed}",
        )
        self.done = 0
        self.start = time.perf_counter()

    def _say(self, line: str) -> None:
        """A progress line (stderr), above the bar on a terminal."""
        self.say(line, file=self.out)

    def say(self, line: str, file: IO[str] | None = None) -> None:
        """Print ``line`` (to stdout by default) without breaking the bar."""
        if self.terminal:
            self.bar.clear()
        print(line, file=file or sys.stdout, flush=True)
        if self.terminal:
            self.bar.refresh()

    def _tick(self, name: str, stop: threading.Event) -> None:
        """Refresh the bar every second (terminal) or print a line every ``interval`` s (no terminal)."""
        started = time.perf_counter()
        while not stop.wait(1.0 if self.terminal else self.interval):
            if self.terminal:
                self.bar.refresh()
            else:
                self._say(f"{self.desc}: {name} ... {time.perf_counter() - started:.0f} s")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step: progress while it runs, other libraries' output captured unless ``verbose``."""
        position = f"[{self.done + 1}/{len(self.names)}]"
        self.bar.set_description_str(f"{self.desc} {position} {name}")
        if not self.terminal:
            self._say(f"{self.desc}: {position} {name}")
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(name, stop), daemon=True)
        ticker.start()
        started = time.perf_counter()
        captured = contextlib.nullcontext() if self.verbose else Captured()
        try:
            with captured:
                yield
        except BaseException:
            stop.set()
            ticker.join()
            self.close()
            if isinstance(captured, Captured) and captured.text().strip():
                print(
                    f"--- output of the failed step ({name}) ---\n{captured.text().rstrip()}\n---",
                    file=sys.stderr,
                    flush=True,
                )
            raise
        stop.set()
        ticker.join()
        self.done += 1
        self.bar.update(1)
        if not self.terminal:
            self._say(f"{self.desc}: {name} done ({time.perf_counter() - started:.0f} s)")

    def close(self) -> None:
        self.bar.close()
        if self.out is not sys.stderr:
            self.out.close()
            self.out = sys.stderr

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    items: Iterable[T], desc: str, total: int | None = None, interval: float = INTERVAL_S, terminal: bool | None = None
) -> Iterator[T]:
    """``items`` with a tqdm bar on a terminal, else a line at most every ``interval`` s:
    ``desc: i/total (p %), r it/s, ETA m:ss`` (the ETA when the total is known)."""
    terminal = stderr_is_terminal() if terminal is None else terminal
    if terminal:
        yield from tqdm(items, desc=desc, total=total, dynamic_ncols=True)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    start = last = time.perf_counter()
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and now - last >= interval:
            print(progress_line(desc, i, total, now - start), file=sys.stderr, flush=True)
            last = now
        yield item


def progress_line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    """``desc: 40/101 (40 %), 1.25 it/s, ETA 0:49`` (no percentage or ETA without a total)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total is None:
        return f"{desc}: {done}/?, {rate:.2f} it/s"
    eta = int((total - done) / rate) if rate > 0 else 0
    return f"{desc}: {done}/{total} ({100 * done // max(total, 1)} %), {rate:.2f} it/s, ETA {eta // 60}:{eta % 60:02d}"
