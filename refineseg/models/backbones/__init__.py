"""Backbones: pure-PyTorch ResNet and MobileNetV2 with torchvision's parameter names."""

from __future__ import annotations

from torch import nn

from refineseg.models.backbones.mobilenetv2 import MobileNetV2
from refineseg.models.backbones.resnet import ResNet

__all__ = ["MobileNetV2", "ResNet", "build_backbone", "freeze_batch_norm"]


def build_backbone(name: str, output_stride: int = 32, **kwargs) -> nn.Module:
    """``"resnet18"`` .. ``"resnet152"`` or ``"mobilenet_v2"`` -> feature extractor.

    Every backbone exposes ``out_channels`` and returns a list of feature maps, finest first.
    """
    if name.startswith("resnet"):
        return ResNet(int(name[len("resnet") :]), output_stride=output_stride)
    if name == "mobilenet_v2":
        if output_stride != 32:
            raise ValueError("mobilenet_v2 supports output_stride=32 only")
        return MobileNetV2(**kwargs)
    raise ValueError(f"unknown backbone {name!r}")


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode and stop its gradients.

    :class:`~refineseg.models.SegmentationModel` calls this again after each ``train()``, so
    the running statistics and affine parameters stay fixed, which is what small per-GPU
    batches need (and what makes DDP runs comparable to single-process ones).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
