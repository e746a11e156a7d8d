"""Model registry: ``create_model(name, num_classes, **options)`` and ``list_models()``.

Every model is one row of :data:`MODELS`, a :class:`ModelSpec` that holds what builds it
(backbone, decoder and its options, head, default dropout, the published key layout), so
:func:`build_model` has no per-family branches and a new variant is a new row.

Families:

* ``refinenet{18,34,50,101,152}``: the released RefineNet layout (3×3 convs, RCUs, 4-stage
  CRP, dropout 0.5 on the two coarsest levels and before the classifier).
* ``lw_refinenet{18,34,50,101,152}``: Light-Weight RefineNet (1×1 convs, no RCUs, dropout 0.5
  on the two coarsest levels).
* ``lw_refinenet_mbv2``: Light-Weight RefineNet on MobileNetV2, ReLU6, no dropout by default.
* ``seed_refinenet{50,101,152}``: the single-stage design with a full-resolution head.
* ``fcn32_mbv2`` (family ``baseline``, not a RefineNet): the same MobileNetV2 backbone with a 1×1
  conv classifying its stride-32 features, upsampled bilinearly (FCN-32s style). It has
  ``lw_refinenet_mbv2``'s recipe so the two train alike; ``benchmarks/boundary.py`` compares them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from refineseg.models.backbones import build_backbone
from refineseg.models.config import ModelConfig
from refineseg.models.decoders import (
    ClassifierHead,
    CoarsestLevelDecoder,
    FullResolutionHead,
    PointwiseClassifierHead,
    RefineNetDecoder,
    SingleStageDecoder,
)
from refineseg.models.hub import is_tag, resolve_backbone_weights
from refineseg.models.reference import MOBILENET_LAYOUT, RESNET_LAYOUT, SEED_LAYOUT, ReferenceLayout
from refineseg.models.segmentation import SegmentationModel
from refineseg.models.weights import load_backbone_weights


@dataclass(frozen=True)
class Recipe:
    """A model's default optimization for ``refineseg train`` (SGD, momentum 0.9, poly decay).

    ``lr`` is the backbone's learning rate and ``lr × decoder_lr_mult`` the decoder's and head's;
    the first ``warmup_iters`` steps (at most a tenth of the run) ramp the learning rate up
    linearly; gradients are clipped to ``clip_grad_norm`` (0: off). Chosen with
    ``benchmarks/convergence.py``: each ``lr`` sits at least 4× below the smallest learning rate
    that diverged for its family, and trains from scratch and from ImageNet weights.
    """

    lr: float
    decoder_lr_mult: float = 10.0
    warmup_iters: int = 100
    clip_grad_norm: float = 5.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything that builds one registered model.

    ``decoder(backbone.out_channels, dropout=p, dropout_levels=..., **decoder_options)`` and
    ``head(decoder.out_channels, num_classes, dropout=p if head_dropout else 0)`` are called with
    ``p`` = the user's ``dropout`` or this spec's default; ``dropout_levels`` are the backbone
    levels (finest first) that get ``Dropout(p)`` while training.
    """

    family: str
    backbone: str
    decoder: type[nn.Module]
    decoder_options: Mapping[str, Any]
    head: type[nn.Module]
    dropout: float
    dropout_levels: tuple[int, ...]
    recipe: Recipe
    head_dropout: bool = False
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    reference: ReferenceLayout | None = None


# Decoder layouts. ResNet levels 0..3 are layer1..layer4; MobileNetV2 levels 0..5 are its
# groups at strides 4, 8, 16, 16, 32, 32 (the reference's l3..l8). Blocks run coarsest first.
_RESNET_CASCADE = {
    "level_groups": [[3], [2], [1], [0]],
    "widths": [512, 256, 256, 256],
    "lateral_convs": True,
    "crp_stages": 4,
}
_REFINENET = {**_RESNET_CASCADE, "kernel_size": 3, "path_rcus": 2, "out_rcus": 3}
_LIGHT_WEIGHT = {**_RESNET_CASCADE, "kernel_size": 1, "path_rcus": 0, "out_rcus": 0}
_LIGHT_WEIGHT_MOBILENET = {
    "level_groups": [[5, 4], [3, 2], [1], [0]],
    "widths": [256] * 4,
    "lateral_convs": False,
    "kernel_size": 1,
    "path_rcus": 0,
    "out_rcus": 0,
    "crp_stages": 4,
    "activation": "relu6",
}
# The seed's CRP ran its ReLU as an extra first stage (see ChainedResidualPooling); kept for fidelity.
_SEED = {"width": 256, "crp_stages": 4, "crp_relu_stage": True}


# Default recipes (benchmarks/convergence.py): with gradient clipping at 5, each default sits well
# below the smallest backbone LR that diverged for its family (at least the 4x margin of Recipe; the
# grid and its numbers are in BENCHMARKS.md). The released recipes' 5e-4 / 5e-3 (backbone /
# decoder) also converge, more slowly.
_REFINENET_RECIPE = Recipe(lr=1e-3)
_LIGHT_WEIGHT_RECIPE = Recipe(lr=2e-3)
_SEED_RECIPE = Recipe(lr=1e-3)


def _refinenet(backbone: str) -> ModelSpec:
    return ModelSpec(
        "refinenet",
        backbone,
        RefineNetDecoder,
        _REFINENET,
        ClassifierHead,
        dropout=0.5,
        dropout_levels=(2, 3),
        recipe=_REFINENET_RECIPE,
        head_dropout=True,
        reference=RESNET_LAYOUT,
    )


def _lw_refinenet(backbone: str) -> ModelSpec:
    return ModelSpec(
        "lw_refinenet",
        backbone,
        RefineNetDecoder,
        _LIGHT_WEIGHT,
        ClassifierHead,
        dropout=0.5,
        dropout_levels=(2, 3),
        recipe=_LIGHT_WEIGHT_RECIPE,
        reference=RESNET_LAYOUT,
    )


def _seed_refinenet(backbone: str) -> ModelSpec:
    return ModelSpec(
        "seed_refinenet",
        backbone,
        SingleStageDecoder,
        _SEED,
        FullResolutionHead,
        dropout=0.0,
        dropout_levels=(2, 3),
        recipe=_SEED_RECIPE,
        reference=SEED_LAYOUT,
    )


MODELS: dict[str, ModelSpec] = {
    "refinenet18": _refinenet("resnet18"),
    "refinenet34": _refinenet("resnet34"),
    "refinenet50": _refinenet("resnet50"),
    "refinenet101": _refinenet("resnet101"),
    "refinenet152": _refinenet("resnet152"),
    "lw_refinenet18": _lw_refinenet("resnet18"),
    "lw_refinenet34": _lw_refinenet("resnet34"),
    "lw_refinenet50": _lw_refinenet("resnet50"),
    "lw_refinenet101": _lw_refinenet("resnet101"),
    "lw_refinenet152": _lw_refinenet("resnet152"),
    "lw_refinenet_mbv2": ModelSpec(
        "lw_refinenet",
        "mobilenet_v2",
        RefineNetDecoder,
        _LIGHT_WEIGHT_MOBILENET,
        ClassifierHead,
        dropout=0.0,
        dropout_levels=(4, 5),
        recipe=_LIGHT_WEIGHT_RECIPE,
        backbone_options={"expand_first_block": True},
        reference=MOBILENET_LAYOUT,
    ),
    "seed_refinenet50": _seed_refinenet("resnet50"),
    "seed_refinenet101": _seed_refinenet("resnet101"),
    "seed_refinenet152": _seed_refinenet("resnet152"),
    # Baseline, not a RefineNet: lw_refinenet_mbv2's backbone and recipe without the decoder.
    "fcn32_mbv2": ModelSpec(
        "baseline",
        "mobilenet_v2",
        CoarsestLevelDecoder,
        {},
        PointwiseClassifierHead,
        dropout=0.0,
        dropout_levels=(5,),
        recipe=_LIGHT_WEIGHT_RECIPE,
        backbone_options={"expand_first_block": True},
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registry row of ``name``; ValueError listing the choices for an unknown name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return MODELS[name]


def build_model(config: ModelConfig) -> SegmentationModel:
    """Build an untrained :class:`SegmentationModel` from its configuration."""
    spec = model_spec(config.name)
    dropout = spec.dropout if config.dropout is None else config.dropout
    encoder = build_backbone(spec.backbone, output_stride=config.output_stride, **spec.backbone_options)
    decoder = spec.decoder(
        encoder.out_channels, dropout=dropout, dropout_levels=spec.dropout_levels, **spec.decoder_options
    )
    head = spec.head(decoder.out_channels, config.num_classes, dropout=dropout if spec.head_dropout else 0.0)
    return SegmentationModel(encoder, decoder, head, config)


def create_model(
    name: str,
    num_classes: int = 21,
    backbone_weights: str | os.PathLike | None = None,
    **options: Any,
) -> SegmentationModel:
    """Build a model by name.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output classes.
        backbone_weights: optional torchvision ImageNet checkpoint for the backbone, loaded with
            strict key checking: a path (``.pth`` or ``.safetensors``), or a tag, ``"imagenet"``
            (torchvision's V1 files, every backbone) or ``"imagenet_v2"`` (ResNet-50/101/152),
            found in a cache or downloaded and hash-checked by :mod:`refineseg.models.hub`.
        **options: further :class:`ModelConfig` fields: ``output_stride`` (32/16/8, ResNet
            only), ``freeze_bn``, ``dropout`` (every model; ``None`` = the model's default),
            ``class_names``, ``palette``, ``mean``, ``std``.
    """
    model = build_model(ModelConfig(name=name, num_classes=num_classes, **options))
    if backbone_weights is not None:
        if is_tag(backbone_weights):
            backbone_weights = resolve_backbone_weights(model_spec(name).backbone, backbone_weights)
        load_backbone_weights(model.encoder, backbone_weights)
    return model
