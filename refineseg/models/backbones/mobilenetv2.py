"""MobileNetV2 (width 1.0) feature extractor with torchvision's parameter names.

Modules are named like torchvision's ``mobilenet_v2().features`` (``features.N.conv.M``), so
its ImageNet checkpoint loads once ``classifier.*`` and the final 1280-channel conv
(``features.18``) are dropped; that conv is not part of the segmentation backbone.

Light-Weight RefineNet's layout gives the first inverted residual (expansion 1) a 1×1
expand conv as well. With ``expand_first_block=True`` that block is built like every other
one; a torchvision checkpoint then loads with the expand step set to the identity
(see :func:`refineseg.models.weights.load_backbone_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion, out channels, repeats, first stride) for the seven inverted-residual groups.
MOBILENETV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6; children ``0, 1, 2`` as in torchvision."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expand -> 3×3 depthwise -> 1×1 linear projection, plus the input when shapes match."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int, force_expand: bool = False
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1 or force_expand:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk returning the outputs of groups 2..7.

    Input (N, 3, H, W); outputs with ``out_channels`` [24, 32, 64, 96, 160, 320] at strides
    4, 8, 16, 16, 32, 32 (Light-Weight RefineNet's ``l3`` .. ``l8``).
    """

    def __init__(self, expand_first_block: bool = True) -> None:
        super().__init__()
        self.expand_first_block = expand_first_block
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        self._stage_ends: list[int] = []
        in_channels = 32
        for group, (expansion, channels, repeats, stride) in enumerate(MOBILENETV2_SETTINGS):
            for i in range(repeats):
                force_expand = expand_first_block and group == 0
                features.append(
                    InvertedResidual(in_channels, channels, stride if i == 0 else 1, expansion, force_expand)
                )
                in_channels = channels
            self._stage_ends.append(len(features) - 1)
        self.features = nn.Sequential(*features)
        self._stage_ends = self._stage_ends[1:]  # group 1 (stride 2, 16 channels) is not returned
        self.out_channels = [s[1] for s in MOBILENETV2_SETTINGS[1:]]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._stage_ends:
                features.append(x)
        return features
