"""Decoders and heads of the RefineNet family, assembled from :mod:`refineseg.models.blocks`.

* :class:`RefineNetDecoder`: the cascade of RefineNet blocks from the coarsest backbone
  level to the finest (released RefineNet, Light-Weight RefineNet, LW on MobileNetV2).
* :class:`SingleStageDecoder`: one RefineNet block over all levels (the seed design).
* :class:`CoarsestLevelDecoder`: no refinement at all, the coarsest level passed through
  (the FCN-32s-style baseline ``fcn32_mbv2`` that shows what refinement buys).
* :class:`ClassifierHead`, :class:`PointwiseClassifierHead`, :class:`FullResolutionHead`: the
  per-pixel classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from refineseg.models.blocks import RefineNetBlock, conv, resize


class LevelDropout(nn.Module):
    """``Dropout(p)`` on the backbone levels ``levels`` of a feature list, the others passed through."""

    def __init__(self, p: float, levels: Sequence[int]) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.levels = set(levels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.dropout(f) if i in self.levels else f for i, f in enumerate(features)]


class RefineNetDecoder(nn.Module):
    """Cascaded multi-path refinement over backbone features.

    Block ``i`` fuses the backbone levels ``level_groups[i]`` with the previous block's output
    (block 0 has no previous output). Levels are indices into the backbone's feature list.

    Args:
        in_channels: backbone channels per level, finest first.
        level_groups: backbone levels per block, coarsest block first.
        widths: working width of each block.
        lateral_convs: project each backbone level to its block's width with a conv before the
            block (the ResNet layouts' ``p_ims1d2_outl*_dimred``); without them the MRF convs
            read the backbone features directly (the MobileNetV2 layout).
        kernel_size: 3 (released RefineNet) or 1 (Light-Weight RefineNet).
        path_rcus: RCUs on each backbone path of a block; the previous block's path has none.
        out_rcus, crp_stages, activation: per-block options (see ``RefineNetBlock``).
        dropout_levels: backbone levels that get ``Dropout(dropout)`` during training.

    Forward: list of backbone features -> (N, widths[-1], H_0, W_0) at the finest level.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        level_groups: Sequence[Sequence[int]],
        widths: Sequence[int],
        lateral_convs: bool = True,
        kernel_size: int = 3,
        path_rcus: int = 2,
        out_rcus: int = 3,
        crp_stages: int = 4,
        activation: str = "relu",
        dropout: float = 0.0,
        dropout_levels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.level_groups = [list(g) for g in level_groups]
        self.level_dropout = LevelDropout(dropout, dropout_levels)
        self.laterals = nn.ModuleList()
        self.blocks = nn.ModuleList()
        previous_width = None
        for group, width in zip(self.level_groups, widths):
            if lateral_convs:
                self.laterals.extend(conv(in_channels[lvl], width, kernel_size) for lvl in group)
                path_channels = [width] * len(group)
            else:
                path_channels = [in_channels[lvl] for lvl in group]
            rcus = [path_rcus] * len(group)
            if previous_width is not None:
                path_channels.append(previous_width)
                rcus.append(0)
            self.blocks.append(
                RefineNetBlock(path_channels, width, rcus, out_rcus, crp_stages, kernel_size, activation=activation)
            )
            previous_width = width
        self.out_channels = previous_width

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = self.level_dropout(features)
        laterals = iter(self.laterals)
        out = None
        for group, block in zip(self.level_groups, self.blocks):
            paths = [next(laterals)(features[lvl]) if self.laterals else features[lvl] for lvl in group]
            if out is not None:
                paths.append(out)
            out = block(paths)
        return out


class SingleStageDecoder(nn.Module):
    """The seed design: one RefineNet block over every backbone level at its native width.

    Each level gets one RCU with batch norm, the MRF projects to ``width`` with biased 3×3
    convs and fuses at the finest level (stride 4), then ReLU and a 4-stage CRP
    (``crp_relu_stage``: the seed code's variant, see ``ChainedResidualPooling``).
    ``dropout_levels`` get ``Dropout(dropout)`` during training.
    Forward: list of backbone features -> (N, width, H_0, W_0).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int = 256,
        crp_stages: int = 4,
        crp_relu_stage: bool = False,
        dropout: float = 0.0,
        dropout_levels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.level_dropout = LevelDropout(dropout, dropout_levels)
        self.block = RefineNetBlock(
            in_channels,
            width,
            path_rcus=1,
            out_rcus=0,
            crp_stages=crp_stages,
            kernel_size=3,
            rcu_batch_norm=True,
            rcu_bias_a=False,
            rcu_bias_b=False,
            mrf_bias=True,
            crp_relu_stage=crp_relu_stage,
        )
        self.out_channels = width

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.block(self.level_dropout(features))


class CoarsestLevelDecoder(nn.Module):
    """A baseline without refinement: the coarsest backbone level, unchanged.

    FCN-32s style: the head classifies the last backbone features (stride 32 for MobileNetV2
    and ResNet at output stride 32) and the model upsamples the logits bilinearly to the input
    size. ``dropout_levels`` containing the last level puts ``Dropout(dropout)`` on it while
    training (FCN's dropout before its score layer).
    Forward: list of backbone features -> features[-1], (N, in_channels[-1], H / 32, W / 32).
    """

    def __init__(self, in_channels: Sequence[int], dropout: float = 0.0, dropout_levels: Sequence[int] = ()) -> None:
        super().__init__()
        last = len(in_channels) - 1
        self.dropout = nn.Dropout(dropout) if dropout > 0 and last in dropout_levels else nn.Identity()
        self.out_channels = in_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.dropout(features[-1])


class ClassifierHead(nn.Module):
    """Dropout (training only) then a ``kernel_size`` conv (3×3 by default) to class logits, at the
    decoder's stride."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, kernel_size: int = 3) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        return self.conv(self.dropout(x))


class PointwiseClassifierHead(ClassifierHead):
    """FCN's score layer: dropout (training only) then a 1×1 conv to class logits."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(in_channels, num_classes, dropout, kernel_size=1)


class FullResolutionHead(nn.Module):
    """The seed head: bilinear resize to the input size, conv3-BN-ReLU, conv3 to logits.

    Input (N, C, h, w) at stride 4; output (N, num_classes, H, W) at ``output_size``.
    ``dropout`` (training only) acts on the resized features, before the first conv.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, hidden: int = 128) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.conv = nn.Conv2d(hidden, num_classes, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        return self.conv(self.proj(self.dropout(resize(x, output_size, align_corners=True))))
