"""Segmentation models of the RefineNet family: registry, decoders and heads, saving and loading."""

from .config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .decoders import ClassifierHead, FullResolutionHead, RefineNetDecoder, SingleStageDecoder
from .pretrained import from_pretrained, from_reference, reference_key_map, save_pretrained, to_reference
from .registry import MODELS, ModelSpec, Recipe, build_model, create_model, list_models, model_spec
from .segmentation import MIN_SIDE, SegmentationModel

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MIN_SIDE", "ModelConfig", "SegmentationModel",
    "RefineNetDecoder", "SingleStageDecoder", "ClassifierHead", "FullResolutionHead",
    "MODELS", "ModelSpec", "Recipe", "build_model", "create_model", "list_models", "model_spec",
    "from_pretrained", "save_pretrained", "from_reference", "to_reference", "reference_key_map",
]
