"""Devices: the one place that turns a ``--device`` flag or a model into a ``torch.device``, and
the one rule for whether a device computes bfloat16 natively (training's ``--amp auto``,
inference's ``--precision auto``)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from refineseg.errors import RefineSegError

CPUINFO = Path("/proc/cpuinfo")  # where cpu_has_native_bf16 reads the CPU's flags


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


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively: x86 AVX512_BF16 or AMX-BF16, or Arm's BF16 extension.

    Read from the ``flags`` / ``Features`` lines of :data:`CPUINFO` (``/proc/cpuinfo``; ``cpuinfo``
    replaces its text, for tests); False where that file is missing or oneDNN (the bf16 convolutions)
    is not built in.
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return False
    line = re.search(r"^(?:flags|features)\s*:(.*)$", cpuinfo, re.M | re.I)  # the first core's; all agree
    flags = set(line[1].split()) if line else set()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) and torch.backends.mkldnn.is_available()


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: CUDA compute capability 8.0+ (Ampere on), or a
    CPU per :func:`cpu_has_native_bf16`. Elsewhere bf16 is emulated and can be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False
