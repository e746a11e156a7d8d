"""Shared fixtures: a private REFINESEG_HOME, a saved small checkpoint, one torch thread, the CLI in a
subprocess (``run_cli``), a gloo process group (``gloo_group``) and one exported ONNX model (``exported_mbv2``).

Plain helpers (small models, manifests, synthetic batches, free ports) are in ``helpers.py``, imported as
``from helpers import make_model``. Tests are laid out like the package (``tests/models/``,
``tests/training/``, ...), without ``__init__.py`` files: test file names are unique across the folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from helpers import Exported, make_model, run_gloo_group


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), each worker gets its share of the cores, so
    workers do not oversubscribe them; the processes tests start inherit it through ``OMP_NUM_THREADS``."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()


@pytest.fixture(scope="session", autouse=True)
def private_refineseg_home(tmp_path_factory):
    """Caches the tests write (data-check results, downloaded weights) go to a temp folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("REFINESEG_HOME", str(tmp_path_factory.mktemp("refineseg_home")))
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved :func:`helpers.make_model` (random weights, the test classes): ``<tmp>/best``. Modules that need
    another checkpoint define their own ``checkpoint`` fixture."""
    path = tmp_path_factory.mktemp("ckpt") / "best"
    make_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (no oversubscription on busy CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RunCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """``run_cli(*args)`` runs ``python -m refineseg ARGS`` in a fresh process and returns the
    ``CompletedProcess`` (stdout and stderr as text), with ``OMP_NUM_THREADS=1`` (plus ``env``).

    ``check`` (default) fails the test on a non-zero exit, showing the ends of stdout and stderr; pass
    ``check=False`` to look at the exit status yourself. ``launcher`` replaces ``-m refineseg``, e.g.
    ``["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "refineseg"]``.
    """

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        launcher: Sequence[str] = ("-m", "refineseg"),
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, *launcher, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(launcher)} {' '.join(args)}: exit {proc.returncode}\n"
                f"--- stdout (end)\n{proc.stdout[-2000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def gloo_group() -> Callable[..., None]:
    """``gloo_group(fn, world_size, *args)`` runs ``fn(rank, *args)`` in ``world_size`` processes joined in
    one gloo process group (:func:`helpers.run_gloo_group`; ``fn`` must be a module-level function)."""
    return run_gloo_group


@pytest.fixture(scope="session")
def exported_mbv2(tmp_path_factory, run_cli) -> Exported:
    """lw_refinenet_mbv2 (warm BN, the test classes) saved in ``<tmp>/ckpt`` and exported at 64x64 by
    ``refineseg export`` to ``<tmp>/onnx/model.onnx``: one export shared by the export, ONNX-predict and
    serve tests (an export traces the model symbolically, 10-20 s on a small CPU)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("exported_mbv2")
    model = make_model("lw_refinenet_mbv2", warm_batch_norm=True)
    ckpt, path = root / "ckpt", root / "onnx" / "model.onnx"
    model.save_pretrained(ckpt)
    proc = run_cli("export", "--checkpoint", str(ckpt), "--out", str(path), "--height", "64", "--width", "64")
    return Exported(model, ckpt, path, proc.stdout, proc.stderr)
