"""Training: configuration, the training loop, crash-safe checkpoints, DDP helpers."""

from .config import TrainConfig
from .trainer import build_optimizer, poly_lr_lambda, segmentation_loss, train

__all__ = ["TrainConfig", "train", "build_optimizer", "poly_lr_lambda", "segmentation_loss"]
