"""File writes that never leave a truncated file and fail with one line.

Every output refineseg writes (weights, checkpoints, label maps, overlays, reports) goes to a
temporary name in the same folder and is renamed into place when complete, so an interrupted
or failed write leaves the previous file or none. A write that fails for lack of space, quota
or permissions raises :class:`~refineseg.errors.WriteError` (``<path>: no space left on
device (needs 12.3 MB, 1.0 MB free)``) after removing what it wrote. Files get the usual
permissions (0666 minus the umask, 0644 by default), not the 0600 of ``tempfile``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from refineseg.errors import WriteError, file_error

#: errno -> the cause named in the one-line error.
WRITE_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large",
}
TMP_MARK = ".tmp-"  # temporary names: .<name>.tmp-<pid><suffix>


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the file system holding ``path`` (its nearest existing ancestor), or None."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_write_failure(error: BaseException) -> bool:
    """True for an OSError a user can fix (space, quota, permissions, read-only)."""
    return isinstance(error, OSError) and error.errno in WRITE_CAUSES


def write_error(path: str | os.PathLike, error: OSError, needed: int | None = None) -> WriteError:
    """The one-line :class:`WriteError` for a failed write of ``path``: cause, size needed, space free."""
    cause = WRITE_CAUSES.get(error.errno or 0, error.strerror or str(error))
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        sizes = [f"needs {_megabytes(needed)}"] if needed else []
        sizes += [f"{_megabytes(free)} free"] if free is not None else []
        if sizes:
            cause += f" ({', '.join(sizes)})"
    return file_error(WriteError, path, cause)


def temporary_name(path: str | os.PathLike) -> Path:
    """``.<name>.tmp-<pid><suffix>`` next to ``path``: hidden, unique per process, same suffix."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}{path.suffix}")


def _chmod_like_new_file(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``.

    On any exception the temporary file is removed; an OSError of space, quota or permissions
    becomes a one-line :class:`WriteError` naming ``path`` (``needed``: the bytes it takes, if
    known). The temporary name keeps ``path``'s suffix, so writers that infer the format from
    it (Pillow, matplotlib) work unchanged.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if tmp.exists():
            _chmod_like_new_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_write_failure(e):
            raise write_error(path, e, needed) from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`), flushed to disk."""
    with atomic_write(path, needed=len(data)) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def remove_dead_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files (``.<name>.tmp-<pid><suffix>``) of processes no longer running.

    What an interrupted run left behind; those of live processes (another run writing to the same
    folder) are left alone. Returns the number removed.
    """
    removed = 0
    for entry in Path(folder).iterdir():
        if not (entry.name.startswith(".") and TMP_MARK in entry.name and entry.is_file()):
            continue
        digits = entry.name.rsplit(TMP_MARK, 1)[1].split(".")[0]
        if digits.isdigit() and int(digits) != os.getpid() and _alive(int(digits)):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True
