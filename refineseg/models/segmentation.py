"""The segmentation model: an encoder (backbone), a RefineNet decoder and a head."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refineseg.models.backbones import freeze_batch_norm
from refineseg.models.config import ModelConfig
from refineseg.models.weights import save_weights_file
from refineseg.utils.files import write_text

#: The smallest input side every model accepts (five stride-2 stages need at least one pixel).
MIN_SIDE = 32
#: The two files of a ``save_pretrained`` directory.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class SegmentationModel(nn.Module):
    """``encoder -> decoder -> head``, returning per-pixel class logits.

    ``model(x)`` takes a normalized float batch (N, 3, H, W), any H, W >= 32, and returns
    logits (N, num_classes, H, W), upsampled bilinearly (``align_corners=False``).
    ``model(x, upsample=False)`` returns the head's native output instead: stride 4 for the
    RefineNet and Light-Weight families, full resolution for the single-stage design.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.config = config
        if config.freeze_bn:
            freeze_batch_norm(self.encoder)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"input sides must be >= {MIN_SIDE} pixels, got {tuple(x.shape[-2:])}")
        size = x.shape[-2:]
        logits = self.head(self.decoder(self.encoder(x)), size)
        if upsample and logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if mode and self.config.freeze_bn:
            freeze_batch_norm(self.encoder)
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (for the backbone learning rate)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Trainable decoder and head parameters (for the decoder learning rate)."""
        return [p for m in (self.decoder, self.head) for p in m.parameters() if p.requires_grad]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` (every parameter and buffer) and ``config.json`` into
        ``directory`` (created if needed); :func:`refineseg.from_pretrained` reads them back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights_file(self.state_dict(), directory / WEIGHTS_NAME)
        write_text(directory / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")
