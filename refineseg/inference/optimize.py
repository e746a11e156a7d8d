"""Inference optimizations: batch-norm folding, channels-last, reduced precision, torch.compile.

:func:`optimize_for_inference` turns a trained model into an eval-only module with the same
contract (normalized float32 (N, 3, H, W) in, float32 logits (N, C, H, W) out), so it can be
passed to :func:`refineseg.inference.predictor.predict_probabilities` or
:func:`refineseg.inference.predictor.segment` unchanged::

    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    probs = predict_probabilities(fast, x, mode="slide", crop=512)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from refineseg.utils.device import model_device

__all__ = ["Float32", "InferenceModel", "fold_batch_norm", "keep_stem_float32", "optimize_for_inference"]

# (conv, batch norm) attribute pairs where the BN directly follows the conv in ``forward``:
# ResNet stem and blocks, and the RCU (``bn(conv_a(...))``).
_CONV_BN_ATTRIBUTES = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv_a", "bn"))


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d (with bias) computing ``bn(conv(x))`` with BN in eval mode (running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d({bn.num_features}) does not follow a conv with {conv.out_channels} outputs")
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(conv.out_channels)
    gamma = bn.weight.detach().double() if bn.weight is not None else weight.new_ones(bn.num_features)
    beta = bn.bias.detach().double() if bn.bias is not None else weight.new_zeros(bn.num_features)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)

    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        folded.weight.copy_(weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean.double()) * scale + beta)
    return folded


def _is_pair(conv: object, bn: object) -> bool:
    return type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm2d folded into the Conv2d right before it.

    Pairs are found by the conventions of this package: attribute pairs ``(conv1, bn1)``,
    ``(conv2, bn2)``, ``(conv3, bn3)``, ``(conv_a, bn)`` and, in every ``nn.Sequential``, a
    Conv2d child directly followed by a BatchNorm2d child (ResNet ``downsample``, MobileNetV2
    blocks, the full-resolution head). Each conv becomes one Conv2d with bias and its BN an
    ``nn.Identity``. Folding is computed in float64 and cast back to the conv's dtype.

    The copy reproduces the model's *eval-mode* output (BN with running statistics); it is
    returned in eval mode, marked ``batch_norm_folded = True``, and is meant for inference
    only: its ``state_dict`` no longer matches the architecture's. ``model`` is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for conv_name, bn_name in _CONV_BN_ATTRIBUTES:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _is_pair(conv, bn):
                setattr(module, conv_name, _folded_conv(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if _is_pair(module[i], module[i + 1]):
                    module[i] = _folded_conv(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    folded.batch_norm_folded = True
    return folded


class Float32(nn.Module):
    """Runs ``module`` in float32 with autocast off (the input cast up): for the few layers where
    reduced precision costs the most accuracy and saves the least time."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


def stem_convs(model: nn.Module, side: int = 64) -> list[str]:
    """Names (in ``model.encoder``) of the encoder's convolutions whose output is at stride 1 or 2: the stem.

    Found by one forward pass of the encoder on a ``side``² input; none when ``model`` has no
    ``encoder`` (not a :class:`~refineseg.models.SegmentationModel`).
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return []
    found: list[str] = []

    def record(name: str):
        return lambda module, inputs, output: found.append(name) if 2 * output.shape[-1] >= side else None

    hooks = [m.register_forward_hook(record(name)) for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        parameter = next(encoder.parameters())
        with torch.no_grad():
            encoder(torch.zeros(1, 3, side, side, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def keep_stem_float32(model: nn.Module) -> list[str]:
    """Wrap the encoder's stem convolutions (:func:`stem_convs`) of ``model`` in :class:`Float32`, in place.

    Under bf16 autocast these few high-resolution, few-channel layers cost the most label agreement
    with fp32 and save the least time: on CamVid val, lw_refinenet_mbv2's labels agree with fp32 on
    99.2% of the pixels with everything in bf16 and on 99.7% with the stem in fp32 (BENCHMARKS.md,
    "Inference precision"). Returns the wrapped names.
    """
    names = stem_convs(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.encoder.get_submodule(parent_name) if parent_name else model.encoder
        setattr(parent, child, Float32(getattr(parent, child)))
    return names


class InferenceModel(nn.Module):
    """Eval-only wrapper: float32 (N, 3, H, W) in, float32 logits (N, C, H, W) out.

    Converts the input to channels-last when the model is, runs the model under autocast when
    ``dtype`` is bfloat16/float16, and returns contiguous float32 logits. ``config`` and
    ``device`` mirror the wrapped model's, so the inference helpers accept it as a model.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = getattr(model, "config", None)
        self.dtype = dtype
        self.channels_last = channels_last
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError("an optimized inference model cannot be trained; optimize the original model again")
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(x, upsample=upsample)
        return logits.float().contiguous()


def optimize_for_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> InferenceModel:
    """An optimized, eval-mode copy of ``model`` for inference; ``model`` is not modified.

    Args:
        fold_bn: fold BatchNorm into the preceding convs (:func:`fold_batch_norm`).
        channels_last: store weights and run convolutions in NHWC memory format (faster with
            oneDNN on CPU and with tensor cores on CUDA).
        compile: ``torch.compile`` the model (default mode, ``dynamic=None``: the first input
            size compiles a static graph, a second size one graph with dynamic shapes that
            then serves every size; ``dynamic=False`` would recompile for each new size).
            Compilation takes tens of seconds on first use.
        dtype: ``None``/``torch.float32``; ``torch.bfloat16`` (CPU or CUDA) or
            ``torch.float16`` (CUDA only) run under autocast, except the encoder's stride-2 stem,
            which stays float32 (:func:`keep_stem_float32`); logits are still float32.
        device: move the model there (default: where it is).

    Returns an :class:`InferenceModel`: normalized float32 (N, 3, H, W) -> float32 logits
    (N, num_classes, H, W), with ``.config`` and ``.device``.
    """
    if dtype == torch.float32:
        dtype = None
    if dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    target = torch.device(device) if device is not None else model_device(model)
    if dtype == torch.float16 and target.type != "cuda":
        raise ValueError("float16 inference needs CUDA; use torch.bfloat16 on CPU")

    optimized = fold_batch_norm(model) if fold_bn else copy.deepcopy(model).eval()
    optimized.to(target)
    if dtype is not None:
        keep_stem_float32(optimized)
    if channels_last:
        optimized.to(memory_format=torch.channels_last)
    if compile:
        optimized.compile()  # in place: parameter names stay as they are
    return InferenceModel(optimized, dtype=dtype, channels_last=channels_last)
