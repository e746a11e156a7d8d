"""Devices: the one place that turns a ``--device`` flag or a model into a ``torch.device``."""

from __future__ import annotations

import torch
from torch import nn

from refineseg.errors import RefineSegError


def select_device(device: str | None) -> torch.device:
    """``device`` as a torch.device; None means cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise RefineSegError(f"invalid device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RefineSegError(f"device {device!r} requested but CUDA is not available")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: its ``device`` attribute (wrappers such as InferenceModel), else its first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device
