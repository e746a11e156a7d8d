"""The training loop behind ``refineseg train`` (single process, or DDP under torchrun).

One loop iteration: :func:`optimizer_step`, a log record, every ``val_interval`` steps
:func:`validate_and_save_best`, every ``ckpt_interval`` steps :func:`save_last`.

Step ``k`` consumes ``accum_steps`` micro-batches whose data order, augmentation and dropout are
functions of the seed and the step alone, and every checkpoint stores the optimizer, scheduler,
scaler and RNG states. Resuming from ``OUT/last`` therefore reproduces an uninterrupted run
bit for bit on CPU.

Preemption: SIGTERM, SIGINT or SIGUSR1 during the loop (what SLURM and Kubernetes send before a
kill) stops the run after the optimizer step in progress. The processes agree on the stop after
every step (an all-reduce), so all stop after the same one; ``last/`` is written (a validation
due at that step is skipped and runs first on resume), rank 0 prints one line naming the step,
and :func:`train`'s :class:`TrainResult` has ``preempted=True`` and ``exit_code``
:data:`PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL: "stopped early, resume me"), which ``refineseg train``
exits with. A second signal acts as without this (a double Ctrl-C interrupts). Under torchrun,
signal the ranks or torchrun (it forwards SIGTERM and SIGINT to every rank, then kills them after
30 s; add SIGUSR1 to ``TORCHELASTIC_SIGNALS_TO_HANDLE`` for that one); torchrun itself then exits 1,
so requeue scripts should run with ``--resume auto``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from refineseg.errors import RefineSegError
from refineseg.evaluation.evaluate import evaluate_model
from refineseg.models import SegmentationModel
from refineseg.report import write_training_report
from refineseg.report.visualize import plot_curves
from refineseg.training.config import TrainConfig, resolve_amp
from refineseg.training.losses import CrossEntropyLoss
from refineseg.training.progress import MetricsLog, StepLog
from refineseg.training.run_state import (
    PREEMPTED_EXIT_CODE,
    STATE_NAME,
    StopSignals,
    atomic_directory,
    capture_rng_state,
    restore_rng_state,
    save_state,
)
from refineseg.training.setup import Claim, Run, claim_out, micro_batches, set_up_run, start_writing
from refineseg.utils import distributed as dist_utils
from refineseg.utils.device import model_device, select_device
from refineseg.utils.files import write_text

log = logging.getLogger("refineseg.train")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp none: no autocast


def optimizer_step(
    net: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    step: int,
    accum_steps: int = 1,
    amp: str = "none",
    clip_grad_norm: float = 0.0,
    criterion: nn.Module | None = None,
    channels_last: bool = False,
) -> float:
    """Take optimizer step number ``step`` (1-based) on the next ``accum_steps`` micro-batches.

    Each micro-batch is ``(B, 3, H, W)`` images and ``(B, H, W)`` masks (moved to ``net``'s
    device). Micro-batch losses are divided by ``accum_steps``, so the summed gradients equal
    those of one batch of ``accum_steps × B`` images; a DDP ``net`` all-reduces them only on the
    last micro-batch (``no_sync`` before). With ``clip_grad_norm > 0`` the (unscaled) gradients'
    global norm is clipped to it. ``criterion(logits, masks)`` is the loss (default: cross-entropy,
    see :mod:`refineseg.training.losses`). ``channels_last`` hands ``net`` the images in NHWC memory (for a
    ``net`` converted by ``to(memory_format=torch.channels_last)``). Then the (optional) scaler
    steps the optimizer and the scheduler advances. Returns the step's loss; raises
    RefineSegError naming the step when the loss is not finite.
    """
    device = model_device(net)
    autocast_dtype = AUTOCAST_DTYPES.get(amp)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for micro in range(accum_steps):
        images, masks = next(batches)
        images = images.to(
            device, non_blocking=True, memory_format=torch.channels_last if channels_last else torch.preserve_format
        )
        masks = masks.to(device, non_blocking=True)
        sync = micro == accum_steps - 1 or not isinstance(net, DistributedDataParallel)
        with nullcontext() if sync else net.no_sync():
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = net(images)
            if criterion is None:
                criterion = CrossEntropyLoss(num_classes=logits.shape[1])
            loss = criterion(logits, masks) / accum_steps
            scaler.scale(loss).backward()
        step_loss += loss.item()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16 loss-scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    if not math.isfinite(step_loss):
        raise RefineSegError(f"loss became {step_loss} at step {step}; lower --lr, or train in fp32 with --amp none")
    return step_loss


def validate_and_save_best(
    model: SegmentationModel, val_set, out: Path, metrics: MetricsLog, *, step: int, best_miou: float
) -> float:
    """Score ``model`` on ``val_set``, log it, and keep ``out/best`` as the best model so far.

    Every process must call it (evaluation is sharded over ranks); rank 0 writes ``out/best``
    (model + ``metrics.json``) atomically when mIoU beats ``best_miou``, and redraws
    ``out/plots`` and ``out/report.html``. Pass the bare model, not a DDP wrapper. Returns the new best mIoU.
    """
    main = dist_utils.is_main_process()
    summary, matrix = evaluate_model(model, val_set, progress=False)  # restores the model's train/eval mode
    metrics.add({"iter": step, "mIoU": summary["mIoU"], "aAcc": summary["aAcc"], "mAcc": summary["mAcc"]})
    if main:
        tqdm.write(f"step {step}: val mIoU {summary['mIoU']:.4f}  aAcc {summary['aAcc']:.4f}")
    if summary["mIoU"] > best_miou:
        best_miou = summary["mIoU"]
        if main:
            atomic_directory(
                out / "best",
                lambda d: (model.save_pretrained(d), write_text(d / "metrics.json", json.dumps(summary, indent=2))),
            )
    if main:
        plot_curves(metrics.records, out / "plots")
        write_training_report(out, summary, matrix, step=step, palette=val_set.palette)  # OUT/report.html
    return best_miou


def save_last(
    out: Path,
    model: SegmentationModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    step: int,
    best_miou: float,
    rng_state: dict[str, Any],
    config: TrainConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Checkpoint the run in ``out/last``: the model plus ``training_state.pt``; returns that path.

    Rank 0 writes the directory atomically, then every process waits for it. ``rng_state``
    (from :func:`capture_rng_state` right after the optimizer step) is what a resumed run
    restores, so it continues exactly as this one does. ``extra`` adds plain values to the
    training state (the loop's ``validate_pending`` and ``log_window``).
    """
    last = out / "last"
    if dist_utils.is_main_process():
        state = {
            "step": step,
            "best_miou": best_miou,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state,
            "config": dataclasses.asdict(config),
            **(extra or {}),
        }
        atomic_directory(last, lambda d: (model.save_pretrained(d), save_state(state, d / STATE_NAME)))
    dist_utils.barrier()
    return last


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: where the run's checkpoints are and how it ended."""

    best_miou: float  # the best validation mIoU seen (-1.0 when the run never validated)
    last: Path  # OUT/last: the resumable checkpoint
    best: Path  # OUT/best: the checkpoint with the best validation mIoU
    out: Path  # the run directory
    step: int  # the last step completed: ``config.iters``, or the step a preempted run's ``last/`` holds
    preempted: bool  # a stop signal ended the run before ``config.iters``
    exit_code: int  # :data:`PREEMPTED_EXIT_CODE` when preempted, else 0; what ``refineseg train`` exits with


def train(config: TrainConfig) -> TrainResult:
    """Train as configured: one process, or one rank of a torchrun DDP job; see :class:`TrainResult`.

    ``preempted`` is True when a stop signal ended the run early at ``step`` (``last/`` holds
    that step); ``exit_code`` is then :data:`PREEMPTED_EXIT_CODE`, else 0.
    """
    device = select_device(config.device)
    if device.type == "cuda" and device.index is None:  # one GPU per torchrun process
        device = torch.device("cuda", dist_utils.local_rank())
    config = dataclasses.replace(config, amp=resolve_amp(config.amp, device))  # config.yaml records the choice
    if config.amp == "fp16" and device.type != "cuda":
        raise RefineSegError("--amp fp16 needs CUDA; use --amp bf16 on CPU")
    distributed = dist_utils.init_distributed(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _train(config, device, distributed)
    finally:
        dist_utils.cleanup_distributed()


def _train(config: TrainConfig, device: torch.device, distributed: bool) -> TrainResult:
    """Claim OUT (lock and checks), train, and release the lock whatever happens."""
    claim = claim_out(config, device)
    try:
        return _train_claimed(config, device, distributed, claim)
    finally:
        if claim.lock is not None:
            claim.lock.release()


#: What a DataLoader's RuntimeError says when one of its workers died.
WORKER_DIED = "DataLoader worker (pid"


def _train_claimed(config: TrainConfig, device: torch.device, distributed: bool, claim: Claim) -> TrainResult:
    """Set the run up, only then write into OUT, and loop under :class:`StopSignals`; :func:`train`'s result."""
    out, main = Path(config.out), dist_utils.is_main_process()
    run = set_up_run(config, device, distributed)
    if main:
        start_writing(config, claim, run.step)
    metrics = MetricsLog(out, run.step if run.state is not None else None, main)
    progress = StepLog(config, metrics, run.step, window=run.state.get("log_window") if run.state else None)
    if main:
        _log_start(config, run)
    stopped_by, lost_step = None, False
    try:
        with StopSignals() as stop:
            try:
                stopped_by = _loop(config, run, out, metrics, progress, stop, device)
            except RuntimeError as e:  # a worker started too late to ignore the signal (not with fork)
                if not (stop.requested and WORKER_DIED in str(e)):
                    raise
                stopped_by, lost_step = stop.received.name, True
    finally:  # leave the terminal clean, also when an error ends the run
        progress.close()
        metrics.close()
    if stopped_by and main:
        _print_stop(config, run.step, out, stopped_by, lost_step)
    return TrainResult(
        best_miou=run.best_miou,
        last=out / "last",
        best=out / "best",
        out=out,
        step=run.step - lost_step,
        preempted=stopped_by is not None,
        exit_code=PREEMPTED_EXIT_CODE if stopped_by else 0,
    )


def _log_start(config: TrainConfig, run: Run) -> None:
    """Log one line saying what is trained on what, how it is batched, and in which precision and layout."""
    log.info(
        "training %s on %d images (%s/%s), %d process(es) × batch %d × accum %d, %d steps; amp %s, %s",
        config.model,
        len(run.train_set),
        config.dataset,
        config.train_split,
        dist_utils.world_size(),
        config.batch_size,
        config.accum_steps,
        config.iters,
        config.amp,
        "channels-last" if config.channels_last else "contiguous",
    )


def _print_stop(config: TrainConfig, step: int, out: Path, stopped_by: str, lost_step: bool) -> None:
    """Print the one line of a preempted run: which signal, after (or during) which step, and how to resume."""
    where = (
        f"during step {step}, which a data-loading worker killed by it did not finish; "
        f"the checkpoint in {out / 'last'} (if any) is older"
        if lost_step
        else f"after step {step}/{config.iters}; checkpoint in {out / 'last'}"
    )
    print(f"stopped by {stopped_by} {where}; run the same command with --resume to continue", flush=True)


def _loop(
    config: TrainConfig,
    run: Run,
    out: Path,
    metrics: MetricsLog,
    progress: StepLog,
    stop: StopSignals,
    device: torch.device,
) -> str | None:
    """Train from ``run.step`` to ``config.iters``, updating ``run``; returns what stopped it early, or None.

    Each step: :func:`optimizer_step`, a log record, then validation and checkpoint when due. The RNG
    states are put back after those, so they never change what the following steps compute.
    """
    if run.state is not None and run.state.get("validate_pending"):  # skipped when the run was stopped
        run.best_miou = validate_and_save_best(
            run.model, run.val_set, out, metrics, step=run.step, best_miou=run.best_miou
        )
        restore_rng_state(run.state["rng"])
    batches = micro_batches(run.train_set, config, run.step, device)
    try:
        while run.step < config.iters:
            run.step += 1
            loss = _train_step(config, run, batches)
            rng_after_step = capture_rng_state()
            progress.add(run.step, loss, run.optimizer.param_groups[0]["lr"])
            final = run.step == config.iters
            # A signal to any process stops every process after this same step.
            stopping = not final and dist_utils.any_process(stop.requested, device)
            _validate_and_checkpoint(
                config, run, out, metrics, progress, rng_after_step, final=final, stopping=stopping
            )
            restore_rng_state(rng_after_step)  # validation and checkpointing must not perturb the run
            if stopping:
                return stop.received.name if stop.received else "a signal to another process"
    finally:  # the data-loading workers stopped, also when an error ends the run
        batches.close()
    return None


def _train_step(config: TrainConfig, run: Run, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Optimizer step ``run.step`` with the config's accumulation, precision, clipping and layout; its loss."""
    return optimizer_step(
        run.net,
        batches,
        run.optimizer,
        run.scheduler,
        run.scaler,
        step=run.step,
        accum_steps=config.accum_steps,
        amp=config.amp,
        clip_grad_norm=config.clip_grad_norm,
        criterion=run.criterion,
        channels_last=config.channels_last,
    )


def _validate_and_checkpoint(
    config: TrainConfig,
    run: Run,
    out: Path,
    metrics: MetricsLog,
    progress: StepLog,
    rng_after_step: dict[str, Any],
    *,
    final: bool,
    stopping: bool,
) -> None:
    """Validate every ``val_interval`` steps and at the end; checkpoint every ``ckpt_interval``, at the end
    and when stopping.

    A validation due at a step the run stops after is skipped, and ``last/`` records it as pending:
    stopping must be quick, and a resumed run validates first, so the records match an unstopped run.
    """
    validate = bool(config.val_interval and run.step % config.val_interval == 0) or final
    if validate and not stopping:
        run.best_miou = validate_and_save_best(
            run.model, run.val_set, out, metrics, step=run.step, best_miou=run.best_miou
        )
    if run.step % config.ckpt_interval == 0 or final or stopping:
        save_last(
            out,
            run.model,
            run.optimizer,
            run.scheduler,
            run.scaler,
            step=run.step,
            best_miou=run.best_miou,
            rng_state=rng_after_step,
            config=config,
            extra={"validate_pending": validate and stopping, "log_window": progress.window()},
        )
