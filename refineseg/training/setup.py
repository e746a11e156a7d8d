"""Setting up a training run: claim OUT, build the datasets, the model (new, resumed or initialized
from another run), the loss and its class weights, the optimizer and its poly schedule, all gathered
in a :class:`Run` by :func:`set_up_run`, and the resumable stream of micro-batches the loop reads
(:func:`micro_batches`). :mod:`.trainer` runs the loop on what these return.

Nothing is written into OUT until all of that has worked (:func:`start_writing`): a start or resume
that fails leaves OUT as it was, so the corrected command runs without ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from refineseg.data import build_dataset, eval_transform, train_transform
from refineseg.data.check import check_before_run
from refineseg.data.stats import dataset_statistics
from refineseg.errors import CheckpointError, ConfigError, RefineSegError, file_error
from refineseg.models import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel, create_model, from_pretrained
from refineseg.models.grad_checkpointing import enable_grad_checkpointing
from refineseg.training.config import TrainConfig
from refineseg.training.losses import build_loss, class_weights_from_counts, load_class_weights
from refineseg.training.resume import CONFIG_NAME, check_resume, record_changes
from refineseg.training.run_dir import RunLock, archive_run, claim_run_dir
from refineseg.training.run_state import (
    STATE_NAME,
    ignore_stop_signals,
    load_training_state,
    recover_directory,
    restore_rng_state,
    shut_down_workers,
    stop_signals_blocked,
)
from refineseg.utils import distributed as dist_utils
from refineseg.utils.config import save_yaml

log = logging.getLogger("refineseg.train")


@dataclasses.dataclass
class Claim:
    """What rank 0 learned claiming OUT: the lock, why the old run must be archived, what a resume changes."""

    lock: RunLock | None = None
    archive_reason: str | None = None
    changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)


def claim_out(config: TrainConfig, device: torch.device) -> Claim:
    """Rank 0 locks OUT and checks it may take this run (see :mod:`.run_dir` and :mod:`.resume`), writing
    nothing; a refusal there stops every rank."""
    claim, error = Claim(), None
    if dist_utils.is_main_process():
        try:
            claim.lock = RunLock(config.out).acquire()
            claim.archive_reason = claim_run_dir(config.out, resume=config.resume, overwrite=config.overwrite)
            claim.changes = check_resume(config)
        except RefineSegError as e:
            if claim.lock is not None:
                claim.lock.release()
            error = e
    if dist_utils.any_process(error is not None, device):
        raise error or RefineSegError(f"{config.out}: rank 0 could not claim the run directory")
    return claim


def start_writing(config: TrainConfig, claim: Claim, step: int) -> None:
    """Rank 0, once the run is set up: archive OUT's old run if claimed so, write ``config.yaml``, and
    record the options a resume at ``step`` changed. The first writes into OUT."""
    out = Path(config.out)
    if claim.archive_reason:
        log.info("%s: moved the earlier run to %s (%s)", out, archive_run(out), claim.archive_reason)
    save_yaml(config, out / CONFIG_NAME)
    record_changes(out, claim.changes, step, config.override)


def build_datasets(config: TrainConfig, mean, std):
    folder = {"binary_masks": config.binary_masks}
    train_set = build_dataset(
        config.dataset,
        config.data_root,
        config.train_split,
        transform=train_transform(config.crop, mean, std, (config.scale_min, config.scale_max), seed=config.seed),
        synthetic_samples=config.synthetic_train,
        synthetic_size=config.synthetic_size,
        **folder,
    )
    val_set = build_dataset(
        config.dataset,
        config.data_root,
        config.val_split,
        transform=eval_transform(mean, std, resize=config.val_size),
        synthetic_samples=config.synthetic_val,
        synthetic_size=config.synthetic_size,
        **folder,
    )
    if len(train_set) == 0:
        raise RefineSegError(f"{config.data_root or config.dataset}: the {config.train_split!r} split has no samples")
    check_before_run([train_set, val_set], skip=config.skip_data_check)  # rank 0 checks, every rank stops on errors
    return train_set, val_set


def micro_batches(
    train_set, config: TrainConfig, step: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks) from the first micro-batch of step ``step + 1`` on, epoch after epoch.

    Batches are ``(batch_size, 3, crop, crop)`` float and ``(batch_size, crop, crop)`` int64, on
    the CPU. Which images, and how they are augmented, depends on the seed and position alone,
    so a resumed run reads exactly what the uninterrupted one would have.
    """
    batches_per_epoch = dist_utils.ResumableShardedSampler(
        len(train_set), config.batch_size, config.seed
    ).batches_per_epoch()
    index = step * config.accum_steps
    while True:
        epoch, start = divmod(index, batches_per_epoch)
        sampler = dist_utils.ResumableShardedSampler(len(train_set), config.batch_size, config.seed, epoch, start)
        train_set.set_epoch(epoch)  # augmentation = f(seed, epoch, index); workers are re-created per epoch
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )
        with stop_signals_blocked():  # workers ignore stop signals from their first instruction on
            iterator = iter(loader)
        try:
            for batch in iterator:
                yield batch
                index += 1
        finally:  # also when the generator is closed or an error ends the run
            shut_down_workers(iterator)


def class_weights(config: TrainConfig, train_set) -> np.ndarray | None:
    """``--class-weights``: None, median-frequency weights of the training split (auto), or a file's."""
    if config.class_weights == "none":
        return None
    if config.class_weights == "auto":
        stats = dataset_statistics(train_set, workers=config.workers)
        counts = [(c["pixels"], c["image_pixels"]) for c in stats["classes"]]
        weights = class_weights_from_counts(*np.array(counts, dtype=np.float64).T)
        source = "median-frequency balancing of the training split"
    else:
        weights = load_class_weights(config.class_weights, train_set.num_classes)
        source = config.class_weights
    if dist_utils.is_main_process():
        shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(train_set.class_names, weights))
        log.info("class weights (%s): %s", source, shown)
    return weights


def build_or_resume(config: TrainConfig, train_set, out: Path) -> tuple[SegmentationModel, dict | None]:
    """The model and training state from ``OUT/last`` when resuming, else a new model and None.

    ``resume="auto"`` resumes only when ``OUT/last`` holds a checkpoint; ``True`` insists on one.
    """
    last = out / "last"
    if config.resume:
        if dist_utils.is_main_process():  # one process repairs an interrupted swap, then all look
            recover_directory(last)
        dist_utils.barrier()
        if (last / STATE_NAME).is_file():
            model = from_pretrained(last)
            if model.config.name != config.model or model.num_classes != train_set.num_classes:
                raise file_error(
                    CheckpointError,
                    last,
                    f"checkpoint is {model.config.name} with {model.num_classes} classes, "
                    f"but the run asks for {config.model} with {train_set.num_classes}",
                )
            state = load_training_state(last)
            if int(state["step"]) > config.iters:
                raise ConfigError(
                    f"--iters {config.iters} is below the step of the checkpoint in {last}, "
                    f"{int(state['step'])}: nothing is left to train"
                )
            if dist_utils.is_main_process():
                log.info("resuming from %s at step %d", last, int(state["step"]))
            return model, state
        if config.resume != "auto":
            raise file_error(CheckpointError, last, "no checkpoint to resume from (run without --resume first)")
        if dist_utils.is_main_process():
            log.info("no checkpoint in %s: starting a new run", last)
    model = create_model(
        config.model,
        num_classes=train_set.num_classes,
        class_names=train_set.class_names,
        palette=train_set.palette,
        freeze_bn=config.freeze_bn,
        dropout=config.dropout,
        output_stride=config.output_stride,
        backbone_weights=config.backbone_weights,
    )
    if config.init_from:
        init_from_checkpoint(model, config.init_from)
    return model, None


def init_from_checkpoint(model: SegmentationModel, directory: str | Path) -> None:
    """Copy the weights of a ``save_pretrained`` directory of the same model into ``model``.

    Every tensor must match, except the classifier's when the class counts differ (it keeps its
    fresh initialization, e.g. COCO's 81 classes -> VOC's 21); anything else is a CheckpointError.
    """
    source = from_pretrained(directory)
    if source.config.name != model.config.name:
        raise file_error(
            CheckpointError, directory, f"holds {source.config.name}, but this run trains {model.config.name}"
        )
    theirs, ours = source.state_dict(), model.state_dict()
    differ = [k for k in ours if theirs[k].shape != ours[k].shape]
    if any(not k.startswith("head.") for k in differ):
        raise file_error(CheckpointError, directory, f"tensors of other shapes: {', '.join(differ[:5])}")
    model.load_state_dict({k: (ours[k] if k in differ else theirs[k]) for k in ours})
    if dist_utils.is_main_process():
        kept = f"; classifier reinitialized ({source.num_classes} -> {model.num_classes} classes)" if differ else ""
        log.info("initialized from %s%s", directory, kept)


def poly_lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base LR at step ``s``: linear warm-up, then ``(1 - s/iters) ** power``."""

    def factor(step: int) -> float:
        poly = (1.0 - min(step, config.iters) / config.iters) ** config.poly_power
        if step < config.warmup_iters:
            alpha = step / config.warmup_iters
            return poly * (config.warmup_ratio + (1.0 - config.warmup_ratio) * alpha)
        return poly

    return factor


def build_optimizer(model: SegmentationModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone at ``lr``, decoder and head at ``lr × decoder_lr_mult``."""
    groups = [
        {"params": model.encoder_parameters(), "lr": config.lr},
        {"params": model.decoder_parameters(), "lr": config.lr * config.decoder_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


@dataclasses.dataclass
class Run:
    """A training run set up and ready to loop: data, model, loss, optimizer and where it stands."""

    train_set: Any
    val_set: Any
    model: SegmentationModel
    net: nn.Module  # the model, or its DDP wrapper
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    state: dict[str, Any] | None  # the training state resumed from, or None
    step: int = 0
    best_miou: float = -1.0


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
) -> None:
    """Load a checkpoint's optimizer, scheduler and scaler states, keeping the hyper-parameters of the config.

    The optimizer's buffers and the schedule's position come from the checkpoint; learning rates,
    momentum and weight decay from the freshly built ``optimizer`` and ``scheduler`` (the same values
    unless ``--override`` changed them), the LR recomputed for the checkpoint's step by the config's
    schedule (so a grown ``iters`` stretches it). Unchanged, this is exactly the saved state.
    """
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when saved without fp16 loss scaling
        scaler.load_state_dict(state["scaler"])
    scheduler.base_lrs = base_lrs
    for group, values, base, factor in zip(optimizer.param_groups, hyper, base_lrs, scheduler.lr_lambdas):
        group.update(values, initial_lr=base, lr=base * factor(scheduler.last_epoch))


def set_up_run(config: TrainConfig, device: torch.device, distributed: bool) -> Run:
    """Build everything the loop needs, resuming from ``OUT/last`` if asked; writes nothing into OUT."""
    torch.manual_seed(config.seed)  # identical initialization on every rank
    train_set, val_set = build_datasets(config, IMAGENET_MEAN, IMAGENET_STD)  # the models' input normalization
    model, state = build_or_resume(config, train_set, Path(config.out))
    criterion = build_loss(
        config.loss,
        num_classes=train_set.num_classes,
        ignore_index=train_set.ignore_index,
        class_weights=class_weights(config, train_set),
        ohem_thresh=config.ohem_thresh,
        ohem_min_kept=config.ohem_min_kept,
    )
    model.to(device).train()
    if config.channels_last:  # 4-D weights NHWC (checkpoints stay standard: save_pretrained copies them)
        model.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        enable_grad_checkpointing(model)
    if config.sync_bn and distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    run = Run(train_set, val_set, model, model, criterion, optimizer, scheduler, scaler, state)
    if state is not None:
        load_optimizer_state(optimizer, scheduler, scaler, state)
        run.step, run.best_miou = int(state["step"]), float(state["best_miou"])
        restore_rng_state(state["rng"])
    if distributed:
        run.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return run
