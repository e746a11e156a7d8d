"""Training: configuration, the training loop, crash-safe checkpoints, DDP helpers."""

from .config import TrainConfig
from .trainer import (
    build_optimizer, optimizer_step, poly_lr_lambda, save_last, segmentation_loss, train, validate_and_save_best,
)

__all__ = ["TrainConfig", "train", "build_optimizer", "poly_lr_lambda", "segmentation_loss", "optimizer_step",
           "validate_and_save_best", "save_last"]
