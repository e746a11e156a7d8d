"""RefineNet's three building blocks and the multi-path block that composes them.

Lin et al., CVPR 2017: a RefineNet block takes one or more feature paths at different
resolutions and returns one refined path at the finest of them:

    paths -> Residual Conv Units (per path) -> Multi-Resolution Fusion -> activation
          -> Chained Residual Pooling -> Residual Conv Units (output)

Every published layout (released RefineNet, Light-Weight RefineNet, the single-stage seed
design) is an instance of :class:`RefineNetBlock` with different options.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_activation(name: str) -> nn.Module:
    """``"relu"`` or ``"relu6"`` as a module (never in-place: inputs are reused by residuals)."""
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {name!r}; expected 'relu' or 'relu6'")


def conv(in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """A stride-1 'same' convolution, 1×1 or 3×3."""
    if kernel_size not in (1, 3):
        raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of ``x`` (N, C, h, w) to ``size`` (H, W); a no-op when sizes match."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv_b(act(bn(conv_a(act(x)))))``, shape-preserving (N, C, H, W).

    The released RefineNet uses 3×3 convs with a bias on ``conv_a`` only and no batch norm;
    the seed design adds batch norm after ``conv_a`` and drops the biases.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        bias_a: bool = True,
        bias_b: bool = False,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.act = make_activation(activation)
        self.conv_a = conv(channels, channels, kernel_size, bias=bias_a)
        self.bn = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.conv_b = conv(channels, channels, kernel_size, bias=bias_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_b(self.act(self.bn(self.conv_a(self.act(x)))))


class MultiResolutionFusion(nn.Module):
    """MRF: a conv per path to a common width, bilinear resize to the finest path, sum.

    Input: a list of (N, C_i, H_i, W_i); output (N, out_channels, H, W) at the largest H×W.
    With a single path the input passes through unchanged, as in the paper.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) == 1 and in_channels[0] != out_channels:
            raise ValueError("a single-path MRF is the identity: in and out channels must match")
        self.convs = nn.ModuleList()
        if len(in_channels) > 1:
            self.convs.extend(conv(c, out_channels, kernel_size, bias=bias) for c in in_channels)

    def forward(self, paths: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.convs:
            return paths[0]
        size = paths[0].shape[-2:]
        for p in paths[1:]:  # the finest path (a plain loop: no graph break under torch.compile)
            if p.shape[-2] * p.shape[-1] > size[0] * size[1]:
                size = p.shape[-2:]
        out = None
        for path, conv_i in zip(paths, self.convs):
            y = resize(conv_i(path), size)
            out = y if out is None else out + y
        return out


class ChainedResidualPooling(nn.Module):
    """CRP: ``top = x; repeat: top = conv(maxpool5x5(top)); x = x + top``, shape-preserving.

    Each stage pools the previous stage's output, so the receptive field grows with the chain
    while the residual sum keeps every scale.

    ``relu_stage=True`` reproduces the founding document's code, whose CRP (an ``nn.ModuleList``
    that registered its ReLU before its stages) ran the ReLU as an extra first stage:
    ``top = relu(x); x = x + top`` before the pooling stages, so the output is
    ``x + relu(x) + s1 + ... + sn`` (``2·x + ...`` for the non-negative input it receives inside a
    RefineNet block). Only ``seed_refinenet*`` uses it, so checkpoints of that code load exactly.
    """

    def __init__(self, channels: int, num_stages: int = 4, kernel_size: int = 3, relu_stage: bool = False) -> None:
        super().__init__()
        self.relu_stage = relu_stage
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv(channels, channels, kernel_size) for _ in range(num_stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x
        if self.relu_stage:
            top = torch.relu(x)
            x = x + top
        for conv_i in self.convs:
            top = conv_i(self.pool(top))
            x = x + top
        return x


class RefineNetBlock(nn.Module):
    """One RefineNet block over any number of input paths.

    Args:
        in_channels: channels of each input path (finest resolution first by convention).
        channels: the block's working width (MRF output, CRP, output RCUs).
        path_rcus: number of RCUs on each input path (an int for all paths, or one per path).
        out_rcus: number of RCUs after the CRP.
        crp_stages: stages of the CRP (0 disables it).
        crp_relu_stage: the seed code's CRP variant (see :class:`ChainedResidualPooling`).
        kernel_size: kernel of every conv in the block (3, or 1 for Light-Weight RefineNet).
        rcu_batch_norm, rcu_bias_a, rcu_bias_b: RCU options (see :class:`ResidualConvUnit`).
        mrf_bias: whether the MRF convs carry a bias.
        activation: ``"relu"`` or ``"relu6"``, applied after the fusion and inside RCUs.

    Forward: list of (N, C_i, H_i, W_i) -> (N, channels, H, W) at the finest input size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        path_rcus: int | Sequence[int] = 2,
        out_rcus: int = 3,
        crp_stages: int = 4,
        kernel_size: int = 3,
        rcu_batch_norm: bool = False,
        rcu_bias_a: bool = True,
        rcu_bias_b: bool = False,
        mrf_bias: bool = False,
        activation: str = "relu",
        crp_relu_stage: bool = False,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if isinstance(path_rcus, int):
            path_rcus = [path_rcus] * len(in_channels)
        if len(path_rcus) != len(in_channels):
            raise ValueError("path_rcus needs one entry per input path")

        def rcu_stack(width: int, count: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    ResidualConvUnit(width, kernel_size, rcu_bias_a, rcu_bias_b, rcu_batch_norm, activation)
                    for _ in range(count)
                )
            )

        self.path_rcus = nn.ModuleList(rcu_stack(c, n) for c, n in zip(in_channels, path_rcus))
        self.mrf = MultiResolutionFusion(in_channels, channels, kernel_size, bias=mrf_bias)
        self.act = make_activation(activation)
        self.crp = ChainedResidualPooling(channels, crp_stages, kernel_size, relu_stage=crp_relu_stage)
        self.out_rcus = rcu_stack(channels, out_rcus)

    def forward(self, paths: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(paths) != len(self.path_rcus):
            raise ValueError(f"expected {len(self.path_rcus)} input paths, got {len(paths)}")
        paths = [rcus(p) for rcus, p in zip(self.path_rcus, paths)]
        return self.out_rcus(self.crp(self.act(self.mrf(paths))))
