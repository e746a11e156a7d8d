"""Inference on images of any size: whole-image, sliding-window and multi-scale + flip.

All functions take a model that maps a normalized (N, 3, H, W) batch to logits at input size
(every :class:`~refineseg.models.SegmentationModel` does) and return full-size outputs. Inputs
(and windows) with a side below the models' minimum (``MIN_SIDE``, 32 px) are edge-padded to it
and the logits cropped back, so any image of at least 1 x 1 pixels can be segmented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refineseg.data.transforms import normalize
from refineseg.models import MIN_SIDE
from refineseg.utils.device import model_device

MODES = ["whole", "slide", "multiscale"]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def preprocess(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> normalized (1, 3, H, W) float32."""
    return normalize(image, mean, std).unsqueeze(0)


def padded_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, H, W) of ``model`` for a batch (N, 3, H, W) of any size H, W >= 1.

    Sides below ``MIN_SIDE`` are padded at the bottom/right by repeating the edge pixels (works
    for 1-pixel sides, unlike reflection) and the logits are cropped back to H x W.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if not (pad_h or pad_w):
        return model(x)
    return model(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"))[:, :, :h, :w]


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of ``crop`` covering ``length``; the last one ends at the border."""
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def slide_logits(model: nn.Module, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Sliding-window logits: (N, 3, H, W) -> (N, C, H, W), overlapping windows averaged.

    Windows are ``crop`` square (smaller where the image is smaller) every ``stride`` pixels.
    """
    check_inference_options("slide", crop, stride, (1.0,))
    n, _, h, w = x.shape
    total = count = None
    for top in _window_starts(h, crop, stride):
        for left in _window_starts(w, crop, stride):
            window = x[:, :, top : top + crop, left : left + crop]
            logits = padded_forward(model, window)
            if total is None:
                total = logits.new_zeros(n, logits.shape[1], h, w)
                count = logits.new_zeros(1, 1, h, w)
            total[:, :, top : top + window.shape[2], left : left + window.shape[3]] += logits
            count[:, :, top : top + window.shape[2], left : left + window.shape[3]] += 1
    return total / count


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    mode: str = "whole",
    crop: int = 512,
    stride: int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class probabilities (N, C, H, W) for a normalized batch (N, 3, H, W).

    * ``whole``: one forward pass over the whole image; the softmax of its logits.
    * ``slide``: sliding windows of ``crop`` every ``stride`` (default 2/3 of the crop); the
      softmax of the logits averaged over overlaps.
    * ``multiscale``: the image resized by each of ``scales`` (each pass sliding when the scaled
      image exceeds ``crop``), optionally also flipped horizontally; the softmax probabilities
      of the passes, averaged.
    """
    check_inference_options(mode, crop, stride, scales)
    stride = stride or max(1, crop * 2 // 3)
    if mode == "whole":
        return padded_forward(model, x).softmax(1)
    if mode == "slide":
        return slide_logits(model, x, crop, stride).softmax(1)
    h, w = x.shape[-2:]
    probs = None
    passes = 0
    for scale in scales:
        size = (max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale)))
        scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
        for flipped in (False, True) if flip else (False,):
            inp = scaled.flip(-1) if flipped else scaled
            logits = slide_logits(model, inp, crop, stride) if max(size) > crop else padded_forward(model, inp)
            if flipped:
                logits = logits.flip(-1)
            p = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
            probs = p if probs is None else probs + p
            passes += 1
    return probs / passes


def segment(
    model: nn.Module,
    image: np.ndarray,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options,
) -> np.ndarray:
    """Segment one (H, W, 3) uint8 RGB image -> (H, W) uint8 label map.

    ``mean``/``std`` default to the model's config; ``options`` go to :func:`predict_probabilities`.
    """
    config = getattr(model, "config", None)
    mean = mean or config.mean
    std = std or config.std
    device = model_device(model)
    x = preprocess(image, mean, std).to(device)
    return predict_probabilities(model, x, **options).argmax(1)[0].to(torch.uint8).cpu().numpy()


def check_inference_options(mode: str, crop: int, stride: int | None, scales: Sequence[float]) -> None:
    """Raise ValueError for options :func:`predict_probabilities` cannot use (the one place they are checked)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if crop < 1:
        raise ValueError(f"crop must be >= 1, got {crop}")
    if stride is not None and not 0 < stride <= crop:
        raise ValueError(f"stride must be in [1, crop={crop}], got {stride}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
