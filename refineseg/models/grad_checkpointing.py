"""Gradient (activation) checkpointing for segmentation models.

:func:`enable_grad_checkpointing` makes the backbone stages and the decoder's RefineNet blocks
keep only their inputs during the forward pass and recompute their activations during the
backward pass (``torch.utils.checkpoint``, non-reentrant). That trades roughly one extra
forward pass for a large cut in activation memory, which allows bigger crops or batches.

The modules stay where they are: only their ``forward`` is replaced on the instance, so module
names, ``state_dict()`` keys, hooks and checkpoints are unchanged.

Batch norm: the recomputation runs the module's forward again in training mode, which would
update BatchNorm running statistics (and ``num_batches_tracked``) a second time per step.
The recomputation therefore restores those buffers afterwards, so running statistics match
a run without checkpointing exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from refineseg.models.backbones.mobilenetv2 import InvertedResidual
from refineseg.models.backbones.resnet import ResNet
from refineseg.models.blocks import RefineNetBlock

__all__ = ["checkpointed_modules", "enable_grad_checkpointing", "is_grad_checkpointing"]


class _RestoreBatchNormBuffers:
    """Context manager: snapshot BN buffers of ``module`` on entry, write them back on exit.

    Used as the recomputation context, so the recomputed forward leaves running statistics as
    the original forward left them. Re-usable (a backward with ``retain_graph`` recomputes again).
    """

    def __init__(self, module: nn.Module) -> None:
        self.buffers = [
            b
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
            for b in m.buffers()
        ]
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        self.saved = [b.clone() for b in self.buffers]

    def __exit__(self, *exc: Any) -> bool:
        with torch.no_grad():
            for buffer, value in zip(self.buffers, self.saved):
                buffer.copy_(value)
        self.saved = []
        return False  # never swallow exceptions (checkpoint's early stop uses one)


def _checkpointed_forward(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module``'s class forward, checkpointed while training with gradients enabled."""
    forward = type(module).forward.__get__(module)
    if not (module.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    if torch.compiler.is_compiling():
        # Under torch.compile the recomputation is part of the compiled backward graph
        # (context_fn must be a dispatch mode there), so no buffer restoration is needed.
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    def context_fn() -> tuple[nullcontext, _RestoreBatchNormBuffers]:  # (forward, recomputation) contexts
        return nullcontext(), _RestoreBatchNormBuffers(module)

    return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


def checkpointed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules :func:`enable_grad_checkpointing` wraps, by qualified name.

    ResNet stages ``layer1`` .. ``layer4``, every MobileNetV2 inverted-residual block, and every
    :class:`~refineseg.models.blocks.RefineNetBlock` (decoder). Nested matches are skipped, so no
    checkpoint runs inside another.
    """
    selected: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(parent + ".") for parent in selected):
            continue
        if isinstance(module, ResNet):
            selected.update({f"{name}.layer{i}".lstrip("."): getattr(module, f"layer{i}") for i in range(1, 5)})
        elif isinstance(module, (InvertedResidual, RefineNetBlock)):
            selected[name] = module
    return selected


def enable_grad_checkpointing(model: nn.Module, enabled: bool = True) -> list[str]:
    """Turn gradient checkpointing on (or off) in place; returns the affected module names.

    Checkpointing only acts in training mode with gradients enabled; evaluation and
    ``torch.no_grad()`` inference run the plain forward. Gradients, outputs and BatchNorm
    running statistics equal those without checkpointing (dropout included: the RNG state is
    replayed). ``state_dict()`` keys do not change.
    """
    modules = checkpointed_modules(model)
    if not modules and enabled:
        raise ValueError(f"{type(model).__name__} has no backbone stages or RefineNet blocks to checkpoint")
    for module in modules.values():
        if enabled:
            module.forward = partial(_checkpointed_forward, module)
        elif "forward" in module.__dict__:
            del module.forward
    return list(modules)


def is_grad_checkpointing(model: nn.Module) -> bool:
    """Whether :func:`enable_grad_checkpointing` is active on ``model``."""
    return any("forward" in m.__dict__ for m in checkpointed_modules(model).values())
