"""How ``evaluate``, ``predict`` and ``serve`` run a model: one dataclass, one CLI flag per field."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refineseg.inference.predictor import MODES, PRECISIONS, check_inference_options
from refineseg.utils.config import option


@dataclass(kw_only=True)
class InferenceOptions:
    """How ``evaluate`` and ``predict`` run a model: mode, windows, scales, device, fast path.

    By default the model runs through :func:`~refineseg.inference.optimize.optimize_for_inference`
    (BatchNorm folded into the convolutions, channels-last memory, fp32: same results within
    1e-4, faster); ``--precision bf16`` (CPU or CUDA) or ``fp16`` (CUDA) and ``--compile`` go further.
    """

    mode: str = option("whole", "inference mode", choices=MODES)
    crop: int = option(512, "window size for slide/multiscale inference")
    stride: int | None = option(None, "sliding-window step (default: 2/3 of crop)")
    scales: list[float] = option([1.0], "image scales for multiscale inference")
    flip: bool = option(False, "also average horizontally flipped passes (multiscale only)")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    optimize: bool = option(True, "fold BatchNorm and use channels-last memory (fp32, same results within 1e-4)")
    precision: str = option("fp32", "autocast precision: bf16 (CPU/CUDA) or fp16 (CUDA)", choices=list(PRECISIONS))
    compile: bool = option(False, "torch.compile the model (slow first call, faster after)")

    def __post_init__(self) -> None:
        check_inference_options(self.mode, self.crop, self.stride, self.scales)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model as these options run it (the plain model when every fast path is off)."""
        dtype = PRECISIONS[self.precision]
        if not (self.optimize or self.compile or dtype is not None):
            return model.eval()
        from refineseg.inference.optimize import optimize_for_inference

        return optimize_for_inference(model, fold_bn=self.optimize, channels_last=self.optimize,
                                      compile=self.compile, dtype=dtype)

    def inference_kwargs(self) -> dict:
        """Keyword arguments of :func:`predict_probabilities` / :func:`segment`."""
        return {"mode": self.mode, "crop": self.crop, "stride": self.stride, "scales": self.scales, "flip": self.flip}
