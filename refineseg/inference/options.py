"""How ``evaluate``, ``predict`` and ``serve`` run a model: one dataclass, one CLI flag per field."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from refineseg.inference.predictor import MODES, PRECISIONS, check_inference_options
from refineseg.utils.config import option
from refineseg.utils.device import has_native_bf16, model_device

log = logging.getLogger("refineseg.inference")

#: ``--precision`` choices: ``auto`` resolves to one of :data:`PRECISIONS` for the model's device.
PRECISION_CHOICES = ["auto", *PRECISIONS]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``"bf16"`` where ``device`` computes bfloat16 natively, else ``"fp32"``; other values unchanged.

    The rule is training's ``--amp auto`` (:func:`refineseg.utils.device.has_native_bf16`): CPUs with
    AVX512_BF16, AMX-BF16 or Arm BF16 (and oneDNN), CUDA GPUs of compute capability 8.0+. Elsewhere
    bf16 is emulated and slower than fp32. fp16 is never chosen automatically.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


@dataclass(kw_only=True)
class InferenceOptions:
    """How ``evaluate`` and ``predict`` run a model: mode, windows, scales, device, fast path.

    By default the model runs through :func:`~refineseg.inference.optimize.optimize_for_inference`
    (BatchNorm folded into the convolutions, channels-last memory) at ``--precision auto``: bf16
    autocast where the hardware computes bfloat16 natively (labels agree with fp32 on >= 99.5% of
    the pixels, BENCHMARKS.md), fp32 elsewhere. ``--precision fp32`` gives fp32 results within 1e-4
    of the plain model; ``fp16`` (CUDA) and ``--compile`` go further.
    """

    mode: str = option("whole", "inference mode", choices=MODES)
    crop: int = option(512, "window size for slide/multiscale inference")
    stride: int | None = option(None, "sliding-window step (default: 2/3 of crop)")
    scales: list[float] = option([1.0], "image scales for multiscale inference")
    flip: bool = option(False, "also average horizontally flipped passes (multiscale only)")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    optimize: bool = option(True, "fold BatchNorm and use channels-last memory (same results within 1e-4 in fp32)")
    precision: str = option(
        "auto",
        "autocast precision: auto (bf16 on CPUs with native bf16 instructions and on "
        "CUDA GPUs of compute capability 8.0+, else fp32), fp32, bf16 (CPU/CUDA) or "
        "fp16 (CUDA)",
        choices=PRECISION_CHOICES,
    )
    compile: bool = option(False, "torch.compile the model (slow first call, faster after)")

    def __post_init__(self) -> None:
        check_inference_options(self.mode, self.crop, self.stride, self.scales)
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")

    def resolve_precision(self, device: torch.device) -> str:
        """Turn ``precision="auto"`` into ``fp32`` or ``bf16`` for ``device``, once, and log the choice."""
        if self.precision == "auto":
            self.precision = resolve_precision("auto", device)
            why = "native" if self.precision == "bf16" else "no native"
            log.info(
                "precision: %s (auto: %s bfloat16 on %s; --precision fp32|bf16 to choose)",
                self.precision,
                why,
                device.type,
            )
        return self.precision

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model as these options run it (the plain model when every fast path is off).

        ``precision="auto"`` is resolved here for the model's device (see :meth:`resolve_precision`).
        """
        dtype = PRECISIONS[self.resolve_precision(model_device(model))]
        if not (self.optimize or self.compile or dtype is not None):
            return model.eval()
        from refineseg.inference.optimize import optimize_for_inference

        return optimize_for_inference(
            model, fold_bn=self.optimize, channels_last=self.optimize, compile=self.compile, dtype=dtype
        )

    def inference_kwargs(self) -> dict:
        """Keyword arguments of :func:`predict_probabilities` / :func:`segment`."""
        return {"mode": self.mode, "crop": self.crop, "stride": self.stride, "scales": self.scales, "flip": self.flip}
