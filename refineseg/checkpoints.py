"""Loading and saving weights, always without unpickling code.

* :func:`load_weights_file`: a ``.safetensors`` or ``.pth`` file -> ``{name: tensor}``
  (``torch.load(..., weights_only=True)``; anything else is refused).
* :func:`load_backbone_weights`: a torchvision ImageNet checkpoint into our backbones.
* :func:`from_reference`: the authors' released RefineNet / Light-Weight RefineNet weights.
* :func:`save_pretrained` / :func:`from_pretrained`: our own ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones import MobileNetV2
from .errors import CheckpointError, file_error
from .models import ModelConfig, SegmentationModel, build_model, model_spec

StateDict = dict[str, torch.Tensor]


def load_weights_file(path: str | os.PathLike) -> StateDict:
    """Read a flat ``{name: tensor}`` mapping from a ``.safetensors`` or ``.pth``/``.pt`` file.

    ``.pth`` files are read with ``weights_only=True``, so a pickle that carries code is
    refused before anything runs. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a
    ``module.`` prefix (DataParallel) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(CheckpointError, path, "no such file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        detail = f": it references {unsupported[1]}" if unsupported else ""
        raise file_error(CheckpointError, path,
                         f"not a plain tensor checkpoint, refused to unpickle it{detail} (nothing was executed)")
    except Exception as e:  # corrupt zip, truncated file, not a checkpoint at all
        raise file_error(CheckpointError, path, f"cannot read weights ({type(e).__name__}: {e})".splitlines()[0])
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise file_error(CheckpointError, path, "expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _as_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[StateDict, str]:
    if isinstance(source, Mapping):
        return dict(source), "<state_dict>"
    return load_weights_file(source), os.fspath(source)


def _load_exact(module: nn.Module, state: StateDict, origin: str, mapping: dict[str, str] | None = None) -> None:
    """Copy ``state`` into ``module``: every key consumed, none missing, every shape equal.

    ``mapping`` renames the module's keys to the names used in ``state``.
    Raises :class:`CheckpointError` listing the offending keys.
    """
    own = module.state_dict()
    mapping = mapping or {k: k for k in own}
    wanted = {mapping[k]: k for k in own}
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched = [
        f"{src} {tuple(state[src].shape)} vs {tuple(own[dst].shape)}"
        for src, dst in wanted.items()
        if src in state and state[src].shape != own[dst].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise file_error(CheckpointError, origin, "keys do not match the model; " + "; ".join(problems))
    module.load_state_dict({dst: state[src] for src, dst in wanted.items()}, strict=True)


# ---------------------------------------------------------------------------------------------
# torchvision backbone checkpoints

def _torchvision_mobilenet_to_ours(state: StateDict, backbone: MobileNetV2) -> StateDict:
    """Drop the classifier and last 1×1 conv; give the first block an identity expand step."""
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "features.18."))}
    if not backbone.expand_first_block or "features.1.conv.3.weight" in state:
        return state
    shift = {"features.1.conv.0.": "features.1.conv.1.", "features.1.conv.1.": "features.1.conv.2.",
             "features.1.conv.2.": "features.1.conv.3."}
    out: StateDict = {}
    for k, v in state.items():
        prefix = next((p for p in shift if k.startswith(p)), None)
        out[shift[prefix] + k[len(prefix):] if prefix else k] = v
    # Identity 1x1 conv + a BN that computes (x - 0) / sqrt((1 - eps) + eps) * 1 + 0 = x.
    expand_bn = backbone.features[1].conv[0][1]
    channels = expand_bn.num_features
    out["features.1.conv.0.0.weight"] = torch.eye(channels).reshape(channels, channels, 1, 1)
    out["features.1.conv.0.1.weight"] = torch.ones(channels)
    out["features.1.conv.0.1.bias"] = torch.zeros(channels)
    out["features.1.conv.0.1.running_mean"] = torch.zeros(channels)
    out["features.1.conv.0.1.running_var"] = torch.full((channels,), 1.0 - expand_bn.eps)
    out["features.1.conv.0.1.num_batches_tracked"] = torch.tensor(0)
    return out


def load_backbone_weights(encoder: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load a torchvision ImageNet classifier checkpoint into a backbone, strictly.

    The classifier (``fc.*`` / ``classifier.*``, and MobileNetV2's final 1280-channel conv) is
    dropped; every other key must be present with the right shape.
    """
    state, origin = _as_state_dict(source)
    if isinstance(encoder, MobileNetV2):
        state = _torchvision_mobilenet_to_ours(state, encoder)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_exact(encoder, state, origin)


# ---------------------------------------------------------------------------------------------
# The authors' released layouts (DrSleep/refinenet-pytorch, DrSleep/light-weight-refinenet)

_MBV2_GROUP_OF_FEATURE = {0: (1, 0)}  # features index -> (reference layer, block index)
_n = 1
for _group, _repeats in enumerate((1, 2, 3, 4, 3, 3, 1), start=2):
    for _b in range(_repeats):
        _MBV2_GROUP_OF_FEATURE[_n] = (_group, _b)
        _n += 1

_MBV2_DECODER_NAMES = {  # (block, path) -> reference MRF conv name
    (0, 0): "conv8", (0, 1): "conv7",
    (1, 0): "conv6", (1, 1): "conv5", (1, 2): "conv_adapt4",
    (2, 0): "conv4", (2, 1): "conv_adapt3",
    (3, 0): "conv3", (3, 1): "conv_adapt2",
}


def _resnet_reference_key(key: str) -> str:
    if key.startswith("encoder."):
        return key[len("encoder."):]
    if key.startswith("head.conv."):
        return "clf_conv." + key[len("head.conv."):]
    rules = [
        (r"decoder\.laterals\.(\d+)\.(.*)", lambda m: f"p_ims1d2_outl{int(m[1]) + 1}_dimred.{m[2]}"),
        (r"decoder\.blocks\.(\d+)\.path_rcus\.0\.(\d+)\.conv_a\.(.*)",
         lambda m: f"adapt_stage{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv.{m[3]}"),
        (r"decoder\.blocks\.(\d+)\.path_rcus\.0\.(\d+)\.conv_b\.(.*)",
         lambda m: f"adapt_stage{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv_relu_varout_dimred.{m[3]}"),
        (r"decoder\.blocks\.(\d+)\.mrf\.convs\.0\.(.*)",
         lambda m: f"adapt_stage{int(m[1]) + 1}_b2_joint_varout_dimred.{m[2]}"),
        (r"decoder\.blocks\.(\d+)\.mrf\.convs\.1\.(.*)",
         lambda m: f"mflow_conv_g{int(m[1])}_b3_joint_varout_dimred.{m[2]}"),
        (r"decoder\.blocks\.(\d+)\.crp\.convs\.(\d+)\.(.*)",
         lambda m: f"mflow_conv_g{int(m[1]) + 1}_pool.0.{int(m[2]) + 1}_outvar_dimred.{m[3]}"),
        (r"decoder\.blocks\.(\d+)\.out_rcus\.(\d+)\.conv_a\.(.*)",
         lambda m: f"mflow_conv_g{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv.{m[3]}"),
        (r"decoder\.blocks\.(\d+)\.out_rcus\.(\d+)\.conv_b\.(.*)",
         lambda m: f"mflow_conv_g{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv_relu_varout_dimred.{m[3]}"),
    ]
    return _apply_rules(key, rules)


def _mbv2_reference_key(key: str) -> str:
    m = re.fullmatch(r"encoder\.features\.(\d+)\.(.*)", key)
    if m:
        layer, block = _MBV2_GROUP_OF_FEATURE[int(m[1])]
        if layer == 1:
            return f"layer1.{m[2]}"
        rest = m[2]
        step = re.fullmatch(r"conv\.(\d+)\.(.*)", rest)
        index, tail = int(step[1]), step[2]
        if index == 2:  # projection conv
            return f"layer{layer}.{block}.output.2.0.{tail}"
        if index == 3:  # projection BN
            return f"layer{layer}.{block}.output.2.1.{tail}"
        return f"layer{layer}.{block}.output.{index}.{tail}"
    if key.startswith("head.conv."):
        return "segm." + key[len("head.conv."):]
    rules = [
        (r"decoder\.blocks\.(\d+)\.mrf\.convs\.(\d+)\.(.*)",
         lambda m: f"{_MBV2_DECODER_NAMES[int(m[1]), int(m[2])]}.{m[3]}"),
        (r"decoder\.blocks\.(\d+)\.crp\.convs\.(\d+)\.(.*)",
         lambda m: f"crp{4 - int(m[1])}.0.{int(m[2]) + 1}_outvar_dimred.{m[3]}"),
    ]
    return _apply_rules(key, rules)


def _apply_rules(key: str, rules) -> str:
    for pattern, build in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return build(m)
    raise KeyError(f"no reference name for parameter {key!r}")


def reference_key_map(model: SegmentationModel) -> dict[str, str]:
    """Our ``state_dict`` key -> the key in the authors' released layout, for every tensor."""
    spec = model_spec(model.config.name)
    if spec.family not in ("refinenet", "lw_refinenet"):
        raise ValueError(f"{model.config.name}: no published reference layout for this family")
    convert = _mbv2_reference_key if spec.backbone == "mobilenet_v2" else _resnet_reference_key
    return {k: convert(k) for k in model.state_dict()}


def to_reference(model: SegmentationModel) -> StateDict:
    """Our model's weights renamed to the authors' released layout (the inverse of ``from_reference``)."""
    mapping = reference_key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


def from_reference(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    name: str,
    num_classes: int | None = None,
    **options,
) -> SegmentationModel:
    """Build ``name`` and load weights saved by the authors' released PyTorch models.

    ``checkpoint`` is a path (``.pth``/``.safetensors``) or a state dict in the layout of
    DrSleep/refinenet-pytorch (``refinenet*``) or DrSleep/light-weight-refinenet
    (``lw_refinenet*``). ``num_classes`` is read from the classifier when not given. Every key
    must be consumed with the right shape; otherwise :class:`CheckpointError` lists the keys.
    """
    state, origin = _as_state_dict(checkpoint)
    classifier = "segm.weight" if model_spec(name).backbone == "mobilenet_v2" else "clf_conv.weight"
    if num_classes is None:
        if classifier not in state:
            raise file_error(CheckpointError, origin, f"no classifier weight {classifier!r}; is this a {name} checkpoint?")
        num_classes = int(state[classifier].shape[0])
    model = build_model(ModelConfig(name=name, num_classes=num_classes, **options))
    _load_exact(model, state, origin, reference_key_map(model))
    return model


# ---------------------------------------------------------------------------------------------
# Our own checkpoints

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(model: SegmentationModel, directory: str | os.PathLike) -> None:
    """Write ``model.safetensors`` (all parameters and buffers) and ``config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    config_text = json.dumps(model.config.to_dict(), indent=2)
    _atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(config_text + "\n"))


def from_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a model saved by :meth:`SegmentationModel.save_pretrained` (safetensors only)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for required in (directory, config_path, weights_path):
        if not required.exists():
            raise file_error(CheckpointError, required, "not found (expected a directory written by save_pretrained)")
    try:
        config = ModelConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as e:
        raise file_error(CheckpointError, config_path, f"invalid model config ({e})")
    model = build_model(config)
    _load_exact(model, load_weights_file(weights_path), os.fspath(weights_path))
    return model.to(map_location).eval()
