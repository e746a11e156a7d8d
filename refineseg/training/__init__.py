"""Training: configuration, the training loop, crash-safe checkpoints, DDP helpers."""

from refineseg.training.config import TrainConfig
from refineseg.training.trainer import (
    build_optimizer,
    optimizer_step,
    poly_lr_lambda,
    save_last,
    train,
    validate_and_save_best,
)

__all__ = [
    "TrainConfig",
    "train",
    "build_optimizer",
    "poly_lr_lambda",
    "optimizer_step",
    "validate_and_save_best",
    "save_last",
]
