"""Model size and compute: parameter counts and multiply-accumulates (MACs).

MACs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on the meta device,
so even the largest variant is measured in a fraction of a second without allocating memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from refineseg.models import SegmentationModel


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: "SegmentationModel", height: int = 512, width: int = 512, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at (batch, 3, height, width).

    Counts convolutions, matmuls and the like (FlopCounterMode's FLOPs / 2); pooling,
    activations and interpolation are not counted, as is customary for GMAC figures.
    """
    from refineseg.models import build_model

    if not all(p.is_meta for p in model.parameters()):  # measure a shape-only twin, not the real weights
        with torch.device("meta"):
            model = build_model(model.config)
    x = torch.empty(batch, 3, height, width, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def summarize_model(name: str, num_classes: int = 21, height: int = 512, width: int = 512) -> dict:
    """Name, parameter count, GMACs and output shape of a registered variant at (1, 3, H, W)."""
    from refineseg.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes).eval()
        with torch.no_grad():
            out = model(torch.empty(1, 3, height, width))
    return {
        "model": name,
        "params": count_parameters(model),
        "GMACs": count_macs(model, height, width) / 1e9,
        "output": "×".join(str(s) for s in out.shape),
    }
