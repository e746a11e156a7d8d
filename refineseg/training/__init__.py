"""Training: configuration, the training loop, crash-safe checkpoints, DDP helpers."""

from refineseg.training.config import TrainConfig
from refineseg.training.setup import build_optimizer, poly_lr_lambda
from refineseg.training.trainer import (
    TrainResult,
    optimizer_step,
    save_last,
    train,
    validate_and_save_best,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "build_optimizer",
    "poly_lr_lambda",
    "optimizer_step",
    "validate_and_save_best",
    "save_last",
]
