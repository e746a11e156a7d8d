"""Training configuration: one dataclass, one CLI flag and one YAML key per field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from refineseg.data import DATASETS
from refineseg.models import MIN_SIDE, model_spec
from refineseg.training.losses import parse_loss_spec
from refineseg.utils.config import bool_or_str, check_bounds, option
from refineseg.utils.device import cpu_has_native_bf16, has_native_bf16  # noqa: F401 (re-exported)


@dataclass
class TrainConfig:
    """Everything ``refineseg train`` needs; ``configs/*.yaml`` set these keys."""

    model: str = option("lw_refinenet50", "model name (see `refineseg models`)")
    dataset: str = option("synthetic", "dataset type", choices=list(DATASETS))
    data_root: str | None = option(None, "dataset root folder (not needed for synthetic)")
    train_split: str = option("train", "split to train on (e.g. train_aug for VOC + SBD)")
    val_split: str = option("val", "split to validate on")
    out: str = option("runs/train", "output directory: checkpoints, logs, plots")
    iters: int = option(1000, "optimizer steps", min=1)
    batch_size: int = option(8, "images per process per step", min=1)
    accum_steps: int = option(1, "gradient accumulation: micro-batches per optimizer step", min=1)
    crop: int = option(512, "training crop size", min=1)
    scale_min: float = option(0.5, "random scale lower bound")
    scale_max: float = option(2.0, "random scale upper bound")
    optimizer: str = option("sgd", "optimizer", choices=["sgd", "adam", "adamw"])
    lr: float | None = option(
        None, "backbone learning rate (default: the model's recipe, see `refineseg models`)", min=0.0
    )
    decoder_lr_mult: float | None = option(
        None, "decoder/head learning rate = lr × this (default: the model's recipe)", min=0.0
    )
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    weight_decay: float = option(1e-4, "weight decay", min=0.0)
    poly_power: float = option(0.9, "poly learning-rate decay power", min=0.0)
    warmup_iters: int | None = option(
        None, "linear warm-up steps (default: the model's recipe, at most iters / 10)", min=0
    )
    warmup_ratio: float = option(0.1, "learning rate at the start of warm-up, as a fraction", min=0.0, max=1.0)
    clip_grad_norm: float | None = option(
        None, "clip the gradients' global norm to this (0: off; default: the model's recipe)", min=0.0
    )
    loss: str = option(
        "ce",
        "loss: ce, ohem, dice, lovasz, focal, or a weighted sum such as ce+0.5*dice (see refineseg.training.losses)",
    )
    ohem_thresh: float = option(0.7, "ohem: keep pixels whose true-class probability is below this", min=0.0, max=1.0)
    ohem_min_kept: int = option(100000, "ohem: keep at least this many of the hardest pixels per image", min=1)
    class_weights: str = option(
        "none",
        "per-class loss weights: none; auto (median-frequency balancing of the "
        "training split's pixel counts, as `refineseg check-data` counts them); "
        "or a FILE: check-data's data_report.json, a YAML/JSON list, one number per line",
    )
    freeze_bn: bool = option(False, "freeze backbone BatchNorm (statistics and affine)")
    sync_bn: bool = option(False, "SyncBatchNorm across processes (CUDA DDP only)")
    dropout: float | None = option(
        None, "dropout probability (default: the family's published value)", min=0.0, max=1.0
    )
    output_stride: int = option(32, "backbone output stride (ResNet: 32, 16 or 8)", choices=[8, 16, 32])
    backbone_weights: str | None = option(
        None,
        "torchvision ImageNet checkpoint for the backbone: a file, or "
        "`imagenet` / `imagenet_v2` (cached or downloaded; "
        "see `refineseg weights`)",
    )
    init_from: str | None = option(
        None,
        "start from the weights of this checkpoint directory (e.g. the previous stage's "
        "OUT/best in the COCO -> SBD -> VOC schedule); same model, classifier "
        "reinitialized when the class count differs",
    )
    grad_checkpointing: bool = option(
        False,
        "recompute backbone stages and RefineNet blocks in the backward pass: "
        "several times less activation memory, slower steps",
    )
    amp: str = option(
        "auto",
        "mixed precision: auto (bf16 on CPUs with native bf16 instructions and on CUDA GPUs "
        "of compute capability 8.0+, else none), none, bf16, or fp16 (CUDA)",
        choices=["auto", "none", "bf16", "fp16"],
    )
    channels_last: bool = option(
        True,
        "channels-last (NHWC) weights and inputs: faster training steps on CPU "
        "and CUDA (BENCHMARKS.md), same results up to float rounding",
    )
    seed: int = option(0, "random seed (data order, augmentation, initialization)")
    workers: int = option(2, "data-loading worker processes per training process", min=0)
    val_interval: int = option(500, "validate every N steps (0: only at the end)", min=0)
    ckpt_interval: int = option(500, "checkpoint `last` every N steps (and always at the end)", min=1)
    log_interval: int = option(10, "log loss/LR every N steps", min=1)
    val_size: int | None = option(None, "resize validation images to this shorter side (default: as is)", min=1)
    synthetic_train: int = option(512, "synthetic dataset: training samples", min=1)
    synthetic_val: int = option(64, "synthetic dataset: validation samples", min=1)
    synthetic_size: int = option(128, "synthetic dataset: image side", min=32)
    binary_masks: bool = option(
        False,
        "folder dataset: masks are 0/255 background/foreground "
        "(0 -> 0; 1 and 128..255 -> 1), as `binary: true` in classes.yaml",
    )
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    skip_data_check: bool = option(False, "start without checking every image and mask of both splits first")
    resume: bool | Literal["auto"] = option(
        False,
        "continue from the checkpoint in OUT/last (bit-identical to an uninterrupted run on CPU) with the "
        "options of OUT/config.yaml, those given here overriding them where allowed (see --override); "
        "`--resume auto`: only if OUT/last holds one, else start a new run",
        nargs="?",
        const=True,
        type=bool_or_str,
        metavar="auto",
    )
    override: bool = option(
        False,
        "with --resume: accept options that change the run's meaning (crop, batch size, "
        "LR, data, ... ; see refineseg.training.resume), recorded in "
        "OUT/config_changes.yaml",
    )
    overwrite: bool = option(
        False,
        "OUT holds an earlier run: move it aside to OUT.archived-<time>/ and start "
        "a new one (without this or --resume, such an OUT is refused)",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.binary_masks and self.dataset != "folder":
            raise ValueError(f"binary_masks is for --dataset folder, not {self.dataset}")
        if not (isinstance(self.resume, bool) or self.resume == "auto"):
            raise ValueError(f"resume must be true, false or auto, got {self.resume!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in out, or archive it")
        if self.override and not self.resume:
            raise ValueError("override is for resume: it lets a resumed run change options of its config.yaml")
        if self.crop < MIN_SIDE:  # caught here, not by the first forward pass after OUT was written
            raise ValueError(f"crop must be >= {MIN_SIDE} (the models' smallest input side), got {self.crop}")
        parse_loss_spec(self.loss)  # a bad spec fails here, before anything runs
        if self.scale_min <= 0 or self.scale_max < self.scale_min:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        self.apply_recipe()

    def apply_recipe(self) -> None:
        """Fill the optimization options left unset (None) from the model's :class:`~refineseg.models.Recipe`."""
        recipe = model_spec(self.model).recipe
        if self.lr is None:
            self.lr = recipe.lr
        if self.decoder_lr_mult is None:
            self.decoder_lr_mult = recipe.decoder_lr_mult
        if self.warmup_iters is None:
            self.warmup_iters = min(recipe.warmup_iters, self.iters // 10)
        if self.clip_grad_norm is None:
            self.clip_grad_norm = recipe.clip_grad_norm
        if self.lr < 0 or self.decoder_lr_mult < 0 or self.warmup_iters < 0 or self.clip_grad_norm < 0:
            raise ValueError(
                f"need lr >= 0, decoder_lr_mult >= 0, warmup_iters >= 0, clip_grad_norm >= 0; got "
                f"{self.lr}, {self.decoder_lr_mult}, {self.warmup_iters}, {self.clip_grad_norm}"
            )


def resolve_amp(amp: str, device: torch.device) -> str:
    """``--amp auto`` -> ``"bf16"`` or ``"none"`` for ``device``; other values unchanged.

    bf16 where the hardware has it natively: CUDA compute capability 8.0+ (Ampere on), or a CPU
    per :func:`~refineseg.utils.device.cpu_has_native_bf16` (one rule,
    :func:`refineseg.utils.device.has_native_bf16`, shared with inference's ``--precision auto``).
    There bf16 autocast makes a training step faster, more so with channels-last, at equal
    convergence (measured in BENCHMARKS.md, training and convergence sections); elsewhere it is
    emulated and can be slower than fp32.
    fp16 is never chosen automatically: it needs loss scaling and can overflow.
    """
    if amp != "auto":
        return amp
    return "bf16" if has_native_bf16(device) else "none"
