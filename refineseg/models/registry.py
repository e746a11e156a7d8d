"""Model registry: ``create_model(name, num_classes, **options)`` and ``list_models()``.

Families:

* ``refinenet{18,34,50,101,152}``: the released RefineNet layout (3×3 convs, RCUs, 4-stage
  CRP, dropout 0.5 on the two coarsest levels and before the classifier).
* ``lw_refinenet{18,34,50,101,152}``: Light-Weight RefineNet (1×1 convs, no RCUs).
* ``lw_refinenet_mbv2``: Light-Weight RefineNet on MobileNetV2, ReLU6.
* ``seed_refinenet{50,101,152}``: the single-stage design with a full-resolution head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from ..backbones import build_backbone
from .config import ModelConfig
from .decoders import ClassifierHead, FullResolutionHead, RefineNetDecoder, SingleStageDecoder
from .segmentation import SegmentationModel


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "refinenet" | "lw_refinenet" | "seed_refinenet"
    backbone: str  # "resnet50", "mobilenet_v2", ...


_MODELS: dict[str, ModelSpec] = {}
for _depth in (18, 34, 50, 101, 152):
    _MODELS[f"refinenet{_depth}"] = ModelSpec("refinenet", f"resnet{_depth}")
    _MODELS[f"lw_refinenet{_depth}"] = ModelSpec("lw_refinenet", f"resnet{_depth}")
_MODELS["lw_refinenet_mbv2"] = ModelSpec("lw_refinenet", "mobilenet_v2")
for _depth in (50, 101, 152):
    _MODELS[f"seed_refinenet{_depth}"] = ModelSpec("seed_refinenet", f"resnet{_depth}")

# Published default of dropout per family (applied during training only).
_DEFAULT_DROPOUT = {"refinenet": 0.5, "lw_refinenet": 0.5, "seed_refinenet": 0.0}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return _MODELS[name]


def _build_decoder(spec: ModelSpec, encoder: nn.Module, dropout: float) -> nn.Module:
    channels = encoder.out_channels
    if spec.family == "seed_refinenet":
        return SingleStageDecoder(channels)
    lightweight = spec.family == "lw_refinenet"
    common = dict(
        kernel_size=1 if lightweight else 3,
        path_rcus=0 if lightweight else 2,
        out_rcus=0 if lightweight else 3,
        crp_stages=4,
    )
    if spec.backbone == "mobilenet_v2":
        # Levels l3..l8 of the reference are indices 0..5; l8+l7, l6+l5, l4, l3.
        return RefineNetDecoder(channels, [[5, 4], [3, 2], [1], [0]], [256] * 4, lateral_convs=False,
                                activation="relu6", **common)
    return RefineNetDecoder(channels, [[3], [2], [1], [0]], [512, 256, 256, 256], lateral_convs=True,
                            dropout=dropout, dropout_levels=(2, 3), **common)


def build_model(config: ModelConfig) -> SegmentationModel:
    """Build an untrained :class:`SegmentationModel` from its configuration."""
    spec = model_spec(config.name)
    dropout = _DEFAULT_DROPOUT[spec.family] if config.dropout is None else config.dropout
    kwargs = {"expand_first_block": True} if spec.backbone == "mobilenet_v2" else {}
    encoder = build_backbone(spec.backbone, output_stride=config.output_stride, **kwargs)
    decoder = _build_decoder(spec, encoder, dropout)
    if spec.family == "seed_refinenet":
        head: nn.Module = FullResolutionHead(decoder.out_channels, config.num_classes)
    else:
        head = ClassifierHead(decoder.out_channels, config.num_classes,
                              dropout=dropout if spec.family == "refinenet" else 0.0)
    return SegmentationModel(encoder, decoder, head, config)


def create_model(
    name: str,
    num_classes: int = 21,
    backbone_weights: str | os.PathLike | None = None,
    **options,
) -> SegmentationModel:
    """Build a model by name.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output classes.
        backbone_weights: optional path to a torchvision ImageNet checkpoint (``.pth`` or
            ``.safetensors``) for the backbone; loaded with strict key checking.
        **options: further :class:`ModelConfig` fields: ``output_stride`` (32/16/8, ResNet
            only), ``freeze_bn``, ``dropout``, ``class_names``, ``palette``, ``mean``, ``std``.
    """
    model = build_model(ModelConfig(name=name, num_classes=num_classes, **options))
    if backbone_weights is not None:
        from ..checkpoints import load_backbone_weights

        load_backbone_weights(model.encoder, backbone_weights)
    return model


