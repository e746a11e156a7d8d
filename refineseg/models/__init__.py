"""Segmentation models of the RefineNet family and their registry."""

from .config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .decoders import ClassifierHead, FullResolutionHead, RefineNetDecoder, SingleStageDecoder
from .registry import build_model, create_model, list_models, model_spec
from .segmentation import SegmentationModel

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ModelConfig", "SegmentationModel",
    "RefineNetDecoder", "SingleStageDecoder", "ClassifierHead", "FullResolutionHead",
    "build_model", "create_model", "list_models", "model_spec",
]
