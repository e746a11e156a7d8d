"""Inference: one image (:func:`segment`), whole/sliding/multi-scale modes, tiled prediction of huge
images, batch prediction of files, fast paths (BatchNorm folding), ONNX export and int8 quantization."""

from refineseg.inference.optimize import InferenceModel, fold_batch_norm, optimize_for_inference
from refineseg.inference.options import InferenceOptions
from refineseg.inference.predictor import predict_probabilities, preprocess, segment
from refineseg.inference.tiling import predict_tiled

__all__ = [
    "segment",
    "predict_probabilities",
    "preprocess",
    "InferenceOptions",
    "predict_tiled",
    "InferenceModel",
    "fold_batch_norm",
    "optimize_for_inference",
]
