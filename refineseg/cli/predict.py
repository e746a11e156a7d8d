"""``refineseg predict``: label maps and overlays for files, folders and globs; exit 3 when some failed.

:func:`run_predict` is the command. For every input image it writes ``OUT/<name>.png``, a palette
PNG of class indices, and, optionally, ``OUT/<name>_overlay.png`` (the pieces, and the naming rule
for inputs that share a stem, are in :mod:`refineseg.inference.predict`). ``OUT/manifest.csv``
(``input,label,overlay``, one row per input, in input order) records which input each output came
from; every run writes it before predicting anything.

A bad input (corrupt, truncated, not an image, out of memory, a symlink loop or a broken symlink
in a folder) is reported on stderr as ``error: <file>: <cause>`` and skipped; the rest are
processed. The run ends with a summary line (``N written, M failed``), the failures are listed in
``OUT/errors.txt`` (``<input>: <cause>``, one a line; a run without failures removes an earlier
one) and the command exits with status 3 (:data:`EXIT_SOME_FAILED`). ``--fail-fast`` stops at the
first bad input instead (one-line error, status 2). An output that cannot be written for lack of
space, quota or permissions stops the batch after the summary, with a one-line error and status 2.

Every output is written under a temporary name and renamed, so an interrupted run (Ctrl-C,
``kill -9``) never leaves a truncated file; ``--skip-existing`` continues it: inputs whose outputs
all exist are skipped, and temporary files of runs no longer alive are removed.

Under torchrun (``torchrun --nproc_per_node N -m refineseg predict ...``) the inputs still to do
are split round-robin over the processes, in input order, so each is read and written once, by
one process, and the outputs are those of one process, byte for byte. Each process says how many
it takes (``rank R of N: K of T inputs``); after the last one finishes, rank 0 writes the merged
``errors.txt`` and prints the one summary. Rank 0 lists the inputs, writes the manifest and looks
for existing outputs; the others take its lists (over gloo, whatever the device; GPUs are
``cuda:LOCAL_RANK`` modulo the node's GPUs). A process that fails or is killed ends the job
(torchrun stops the others); a rerun with ``--skip-existing`` completes the set. Under torchrun
rank 0 exits with the status (3 when some inputs failed: torchrun then exits 1 and names it).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from refineseg.cli.common import dataclass_command
from refineseg.errors import DataError, RefineSegError, WriteError, file_error, one_line
from refineseg.inference.options import InferenceOptions
from refineseg.inference.predict import (
    Inputs,
    expand_inputs,
    failure_line,
    is_input_failure,
    load_predictor,
    output_names,
    output_paths,
    predict_file,
)
from refineseg.models import MIN_SIDE
from refineseg.utils import distributed as dist_utils
from refineseg.utils.config import build_config, check_bounds, option, required
from refineseg.utils.device import select_device
from refineseg.utils.files import remove_dead_temporaries, write_text

EXIT_SOME_FAILED = 3  # exit status of `refineseg predict` when some inputs failed (2: one-line error, 75: preempted)
ERRORS_FILE = "errors.txt"  # OUT/errors.txt: "<input>: <cause>" per failed input
MANIFEST_FILE = "manifest.csv"  # OUT/manifest.csv: input,label,overlay per input
GROUP_TIMEOUT = timedelta(hours=24)  # under torchrun, how long a finished process waits for the slowest

Job = tuple[Path, "Path | None"]  # (label file, overlay file or None) of one input


@dataclass(kw_only=True)
class PredictConfig(InferenceOptions):
    """Everything ``refineseg predict`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required(
        "checkpoint directory written by save_pretrained (e.g. runs/train/best), "
        "or an .onnx file with --backend onnxruntime"
    )
    inputs: list[str] = required("image files, folders (their images, not recursive) or glob patterns")
    out: str = option("runs/predict", "output directory for label PNGs, overlays and manifest.csv")
    tile: int | None = option(
        None,
        "tiled mode for images of any size: tile side in pixels (e.g. 1024, at least "
        f"{MIN_SIDE}); memory is bounded by the tile, not the image",
        min=MIN_SIDE,
    )
    overlap: int = option(128, "tiled mode: overlap between neighbouring tiles, blended smoothly")
    tile_batch: int = option(
        1,
        "tiled mode: tiles of equal size per forward pass (e.g. 4 on a GPU with room); "
        "memory grows to about tile_batch x one tile's",
    )
    overlay: bool = option(True, "also write <name>_overlay.png (photo + colours + legend)")
    alpha: float = option(0.5, "overlay opacity of the label colours, 0..1")
    backend: str = option(
        "torch", "inference engine; onnxruntime runs a file from `refineseg export`", choices=["torch", "onnxruntime"]
    )
    skip_existing: bool = option(
        False, "skip inputs whose outputs (label file, and overlay if enabled) exist: continues an interrupted batch"
    )
    fail_fast: bool = option(
        False,
        "stop at the first bad input with a one-line error (exit status 2); by default "
        f"bad inputs are skipped, listed in OUT/{ERRORS_FILE}, and the run exits with "
        f"status {EXIT_SOME_FAILED}",
    )

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        super().__post_init__()
        check_bounds(self)  # tile >= MIN_SIDE: a one-line error before any work
        if self.tile is not None and not 0 <= self.overlap < self.tile:
            raise ValueError(f"need 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}")
        if self.tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {self.tile_batch}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


class PredictResult(list):
    """The label files written, in input order (a ``list`` of Paths), plus what was skipped or failed.

    ``skipped``: label files of inputs skipped by ``skip_existing``; ``failed``: ``(input, line)``
    pairs, ``line`` being the ``<input>: <cause>`` written to errors.txt.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[Path] = []
        self.failed: list[tuple[Path, str]] = []

    @property
    def written(self) -> list[Path]:
        return list(self)

    @property
    def exit_code(self) -> int:
        """0 when every input was written or skipped, :data:`EXIT_SOME_FAILED` otherwise."""
        return EXIT_SOME_FAILED if self.failed else 0


def manifest_text(inputs: Inputs, jobs: list[Job]) -> str:
    """OUT/manifest.csv: ``input,label,overlay`` (file names in OUT; overlay empty without overlays)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "label", "overlay"])
    writer.writerows(
        [str(path), label.name, overlay.name if overlay else ""] for path, (label, overlay) in zip(inputs, jobs)
    )
    return buffer.getvalue()


def _join_torchrun() -> bool:
    """Join the process group torchrun describes, over gloo; True when this call joined it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist_utils.world_size() > 1:
        return False
    return dist_utils.init_distributed("cpu", timeout=GROUP_TIMEOUT)


def _rank_config(config: PredictConfig) -> PredictConfig:
    """``config`` with this process's GPU under torchrun: ``cuda:LOCAL_RANK`` (modulo the node's GPUs,
    so more processes than GPUs share them)."""
    if dist_utils.world_size() > 1 and config.backend == "torch":
        device = select_device(config.device)
        if device.type == "cuda" and device.index is None:
            index = dist_utils.local_rank() % torch.cuda.device_count()
            return dataclasses.replace(config, device=f"cuda:{index}")
    return config


def _prepare(out: Path, inputs: Inputs, jobs: list[Job], skip_existing: bool) -> list[int]:
    """Create OUT, remove dead temporaries, write the manifest; the indices of the inputs to predict."""
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out)
    write_text(out / MANIFEST_FILE, manifest_text(inputs, jobs))
    return [i for i, job in enumerate(jobs) if not (skip_existing and all(p.is_file() for p in job if p is not None))]


def _predict_shard(
    model, config: PredictConfig, inputs: Inputs, jobs: list[Job], mine: list[int], done: list[tuple[int, str | None]]
) -> None:
    """Predict the inputs ``mine``; appends ``(index, None)`` when written, ``(index, line)`` when failed."""
    # disable=None: no bar when stderr is not a terminal; closing it on errors keeps them on their own line.
    with tqdm(mine, desc="predict", unit="img", disable=None if dist_utils.rank() == 0 else True) as bar:
        for i in bar:
            try:
                predict_file(
                    model,
                    inputs[i],
                    *jobs[i],
                    options=config,
                    tile=config.tile,
                    overlap=config.overlap,
                    tile_batch=config.tile_batch,
                    alpha=config.alpha,
                )
            except Exception as e:
                if config.fail_fast or not is_input_failure(e):
                    raise
                done.append((i, failure_line(inputs[i], e)))
                tqdm.write(f"error: {done[-1][1]}", file=sys.stderr)
                continue
            done.append((i, None))


def _result(
    inputs: Inputs, jobs: list[Job], done: list[tuple[int, str | None]], skipped: list[int], problems: bool = True
) -> PredictResult:
    """The result of ``done`` (from any processes), in input order; expansion problems first when ``problems``."""
    result = PredictResult()
    if problems:
        result.failed += [(path, f"{path}: {cause}") for path, cause in inputs.problems]
    result.skipped += [jobs[i][0] for i in skipped]
    for i, line in sorted(done, key=lambda item: item[0]):
        if line is None:
            result.append(jobs[i][0])
        else:
            result.failed.append((inputs[i], line))
    return result


def _write_errors(result: PredictResult, out: Path, stopped: BaseException | None) -> None:
    """Write (or remove) OUT/errors.txt; when the run stopped, a failure here is only reported."""
    errors = out / ERRORS_FILE
    try:
        if result.failed:
            write_text(errors, "".join(f"{line}\n" for _, line in result.failed))
        else:
            errors.unlink(missing_ok=True)  # from an earlier run: errors.txt describes this run only
    except (WriteError, OSError) as e:
        if stopped is None:
            raise
        print(f"could not write {errors}: {one_line(e)}", file=sys.stderr)


def _finish(
    result: PredictResult, total: int, out: Path, stopped: BaseException | None = None, prefix: str = ""
) -> None:
    """Write OUT/errors.txt and print the summary line; ``prefix`` (``rank R: ``): one process's
    summary of a multi-process run that stopped, which leaves errors.txt alone."""
    if not prefix:
        _write_errors(result, out, stopped)
    parts = [f"{len(result)} written", f"{len(result.failed)} failed"]
    if result.skipped:
        parts.append(f"{len(result.skipped)} skipped (outputs exist)")
    done = len(result) + len(result.failed) + len(result.skipped)
    if stopped is not None:
        parts.append(f"{total - done} not processed")
    line = f"{', '.join(parts)} -> {out}"
    if result.failed and not prefix:
        line += f"; failures listed in {out / ERRORS_FILE}"
    if isinstance(stopped, KeyboardInterrupt):
        line = f"interrupted: {line}; continue with --skip-existing"
    elif stopped is not None:
        line = f"stopped: {line}"
    print(prefix + line, flush=True)


def _stopped(
    inputs: Inputs,
    jobs: list[Job],
    done: list[tuple[int, str | None]],
    skipped: list[int],
    mine: list[int],
    out: Path,
    error: BaseException,
) -> None:
    """The summary of a run that stopped (with one process: its errors.txt; with several: this process's line)."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    first = rank == 0
    total = len(mine) + (len(skipped) + len(inputs.problems) if first else 0)
    _finish(
        _result(inputs, jobs, done, skipped if first else [], problems=first),
        total,
        out,
        stopped=error,
        prefix=f"rank {rank}: " if world > 1 else "",
    )


def _together(collective: Callable[[Any], Any], obj: Any) -> Any:
    """``collective(obj)`` (a broadcast or a gather); RefineSegError when another process is gone."""
    try:
        return collective(obj)
    except RuntimeError:  # gloo: "Connection closed by peer"
        raise RefineSegError(
            f"rank {dist_utils.rank()}: another process of this run stopped before the end; "
            "the outputs written are complete: continue with --skip-existing"
        ) from None


def _run_shards(config: PredictConfig, inputs: Inputs, jobs: list[Job]) -> PredictResult:
    """Predict this process's share of ``inputs``; rank 0 writes errors.txt and prints the summary."""
    model = load_predictor(_rank_config(config))
    out = Path(config.out)
    first = dist_utils.rank() == 0  # rank 0 looks at OUT; the others start after it has, from its list
    todo = _together(dist_utils.broadcast_object, _prepare(out, inputs, jobs, config.skip_existing) if first else None)
    skipped = sorted(set(range(len(jobs))) - set(todo))
    rank, world = dist_utils.rank(), dist_utils.world_size()
    mine = todo[rank::world]
    if world > 1:
        print(f"rank {rank} of {world}: {len(mine)} of {len(inputs)} inputs", flush=True)
    done: list[tuple[int, str | None]] = []
    try:
        _predict_shard(model, config, inputs, jobs, mine, done)
        outcomes = [d for part in _together(dist_utils.all_gather_objects, done) for d in part]
    except BaseException as e:  # Ctrl-C, a full disk, --fail-fast, a process gone ...: the summary still comes
        if not (config.fail_fast and is_input_failure(e)):  # --fail-fast on a bad input: the old one-line error
            _stopped(inputs, jobs, done, skipped, mine, out, e)
        raise
    result = _result(inputs, jobs, outcomes, skipped)
    if rank == 0:
        _finish(result, len(inputs) + len(inputs.problems), out)
    return result


def _plan(config: PredictConfig) -> tuple[Inputs, list[Job]]:
    """The inputs and their (label, overlay) files; DataError before any work when inputs match nothing."""
    inputs = expand_inputs(config.inputs)
    if config.fail_fast and inputs.problems:
        raise file_error(DataError, *inputs.problems[0])
    out = Path(config.out)
    return inputs, [
        output_paths(path, name, out, tiled=bool(config.tile), overlay=config.overlay)
        for path, name in zip(inputs, output_names(inputs, out))
    ]


def run_predict(config: PredictConfig) -> PredictResult:
    """Segment every input image; write OUT/<name>.png (+ OUT/<name>_overlay.png) and OUT/manifest.csv.

    Returns the label files written in input order (see :class:`PredictResult` for skipped and
    failed inputs; under torchrun, those of all processes, on each). A bad input is reported and
    skipped, or raises its DataError with ``config.fail_fast``; inputs that match nothing raise
    DataError before any work. Under torchrun rank 0 lists the inputs and the others take its list.
    """
    joined = _join_torchrun()
    try:
        plan = _together(dist_utils.broadcast_object, _plan(config) if dist_utils.rank() == 0 else None)
        return _run_shards(config, *plan)
    finally:
        if joined:
            dist_utils.cleanup_distributed()


def _run(args: argparse.Namespace) -> int:
    """0, or 3 (EXIT_SOME_FAILED) when some inputs failed: they are listed in OUT/errors.txt.

    Under torchrun only rank 0 says so (torchrun then exits 1, naming rank 0's status 3).
    """
    code = run_predict(build_config(PredictConfig, args, args.config)).exit_code
    return code if int(os.environ.get("RANK", "0")) == 0 else 0


def register(sub) -> None:
    dataclass_command(
        sub,
        "predict",
        "segment images; writes label PNGs, overlays and manifest.csv",
        PredictConfig,
        _run,
        positional=("inputs",),
    )
