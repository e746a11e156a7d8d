"""refineseg: RefineNet (Lin et al., CVPR 2017) and its family for semantic segmentation.

Quick start::

    import refineseg
    model = refineseg.create_model("lw_refinenet50", num_classes=21)
    logits = model(batch)  # (N, 3, H, W) normalized -> (N, 21, H, W)
"""

from refineseg.errors import CheckpointError, DataError, MissingDependencyError, RefineSegError
from refineseg.inference.optimize import fold_batch_norm, optimize_for_inference
from refineseg.inference.predictor import predict_probabilities, segment
from refineseg.inference.tiling import predict_tiled
from refineseg.models import (
    ModelConfig,
    SegmentationModel,
    create_model,
    from_pretrained,
    from_reference,
    list_models,
    save_pretrained,
    to_reference,
)
from refineseg.models.blocks import ChainedResidualPooling, MultiResolutionFusion, RefineNetBlock, ResidualConvUnit
from refineseg.models.weights import load_backbone_weights
from refineseg.version import __version__

__all__ = [
    "ResidualConvUnit",
    "MultiResolutionFusion",
    "ChainedResidualPooling",
    "RefineNetBlock",
    "ModelConfig",
    "SegmentationModel",
    "create_model",
    "list_models",
    "from_pretrained",
    "from_reference",
    "load_backbone_weights",
    "save_pretrained",
    "to_reference",
    "segment",
    "predict_probabilities",
    "optimize_for_inference",
    "fold_batch_norm",
    "predict_tiled",
    "RefineSegError",
    "DataError",
    "CheckpointError",
    "MissingDependencyError",
    "__version__",
]
