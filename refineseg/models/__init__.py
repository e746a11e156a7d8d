"""Segmentation models of the RefineNet family: registry, decoders and heads, saving and loading."""

from refineseg.models.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from refineseg.models.decoders import ClassifierHead, FullResolutionHead, RefineNetDecoder, SingleStageDecoder
from refineseg.models.pretrained import (
    from_pretrained,
    from_reference,
    reference_key_map,
    save_pretrained,
    to_reference,
)
from refineseg.models.registry import MODELS, ModelSpec, Recipe, build_model, create_model, list_models, model_spec
from refineseg.models.segmentation import MIN_SIDE, SegmentationModel

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_SIDE",
    "ModelConfig",
    "SegmentationModel",
    "RefineNetDecoder",
    "SingleStageDecoder",
    "ClassifierHead",
    "FullResolutionHead",
    "MODELS",
    "ModelSpec",
    "Recipe",
    "build_model",
    "create_model",
    "list_models",
    "model_spec",
    "from_pretrained",
    "save_pretrained",
    "from_reference",
    "to_reference",
    "reference_key_map",
]
