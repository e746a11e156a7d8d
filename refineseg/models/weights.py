"""Weight files: reading them without unpickling code, strict loading, torchvision backbones.

* :func:`load_weights_file`: a ``.safetensors`` or ``.pth`` file -> ``{name: tensor}``
  (``torch.load(..., weights_only=True)``; anything else is refused).
* :func:`load_exact`: copy a state dict into a module, every key consumed, a one-line report
  of the missing, unexpected and mis-shaped keys otherwise.
* :func:`load_backbone_weights`: a torchvision ImageNet classifier file into our backbones.

This module knows backbones and errors only; the model-level formats (our ``save_pretrained``
directories, the authors' released layouts) live in :mod:`refineseg.models`.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from refineseg.errors import CheckpointError, file_error
from refineseg.models.backbones import MobileNetV2
from refineseg.utils.files import write_bytes

StateDict = dict[str, torch.Tensor]
WeightsSource = str | os.PathLike | Mapping[str, torch.Tensor]


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
        raise file_error(
            CheckpointError,
            path,
            f"not a plain tensor checkpoint, refused to unpickle it{detail} (nothing was executed)",
        ) from e
    except Exception as e:  # corrupt zip, truncated file, not a checkpoint at all
        raise file_error(CheckpointError, path, f"cannot read weights ({type(e).__name__}: {e})".splitlines()[0]) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise file_error(CheckpointError, path, "expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def save_weights_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` as safetensors (CPU, contiguous), atomically: a crash leaves the old file or none.

    A full disk or missing permission raises a one-line :class:`~refineseg.errors.WriteError`.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_bytes(path, save_safetensors(tensors, metadata={"format": "pt"}))


def read_weights(source: WeightsSource) -> tuple[StateDict, str]:
    """``(state dict, where it came from)`` for a path (read with :func:`load_weights_file`) or a mapping."""
    if isinstance(source, Mapping):
        return dict(source), "<state_dict>"
    return load_weights_file(source), os.fspath(source)


def load_exact(
    module: nn.Module, state: Mapping[str, torch.Tensor], origin: str, rename: Callable[[str], str] | None = None
) -> None:
    """Copy ``state`` into ``module``: every key consumed, none missing, every shape equal.

    ``rename`` maps each of the module's ``state_dict`` keys to its name in ``state``
    (default: the same name). Raises :class:`CheckpointError` listing the offending keys.
    """
    own = module.state_dict()
    wanted = {(rename(k) if rename else k): k for k in own}
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
    shift = {
        "features.1.conv.0.": "features.1.conv.1.",
        "features.1.conv.1.": "features.1.conv.2.",
        "features.1.conv.2.": "features.1.conv.3.",
    }
    out: StateDict = {}
    for k, v in state.items():
        prefix = next((p for p in shift if k.startswith(p)), None)
        out[shift[prefix] + k[len(prefix) :] if prefix else k] = v
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


def load_backbone_weights(encoder: nn.Module, source: WeightsSource) -> None:
    """Load a torchvision ImageNet classifier checkpoint into a backbone, strictly.

    The classifier (``fc.*`` / ``classifier.*``, and MobileNetV2's final 1280-channel conv) is
    dropped; every other key must be present with the right shape.
    """
    state, origin = read_weights(source)
    if isinstance(encoder, MobileNetV2):
        state = _torchvision_mobilenet_to_ours(state, encoder)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_exact(encoder, state, origin)
