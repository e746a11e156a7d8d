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


def _meta_pass(model: nn.Module, height: int, width: int, batch: int) -> tuple[int, tuple[int, ...]]:
    """(MACs, output shape) of one forward pass of a model whose parameters are on the meta device.

    Run outside any ``torch.device("meta")`` context: under one, every op also goes through the
    context's dispatch and the pass is several times slower.
    """
    x = torch.empty(batch, 3, height, width, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model.eval()(x)
    return counter.get_total_flops() // 2, tuple(out.shape)


def count_macs(model: SegmentationModel, height: int = 512, width: int = 512, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at (batch, 3, height, width).

    Counts convolutions, matmuls and the like (FlopCounterMode's FLOPs / 2); pooling,
    activations and interpolation are not counted, as is customary for GMAC figures.
    """
    from refineseg.models import build_model

    if not all(p.is_meta for p in model.parameters()):  # measure a shape-only twin, not the real weights
        with torch.device("meta"):
            model = build_model(model.config)
    return _meta_pass(model, height, width, batch)[0]


def summarize_model(name: str, num_classes: int = 21, height: int = 512, width: int = 512) -> dict:
    """Name, parameter count, GMACs and output shape of a registered variant at (1, 3, H, W).

    One forward pass on the meta device gives both the MACs and the output shape.
    """
    from refineseg.models import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    macs, shape = _meta_pass(model, height, width, 1)
    return {
        "model": name,
        "params": count_parameters(model),
        "GMACs": macs / 1e9,
        "output": "×".join(str(s) for s in shape),
    }
