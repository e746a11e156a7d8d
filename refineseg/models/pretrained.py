"""Loading and saving whole models: our ``save_pretrained`` directories and the published layouts.

* :func:`save_pretrained` / :func:`from_pretrained`: ``model.safetensors`` + ``config.json``
  (safetensors only: nothing is unpickled); :func:`from_pretrained` also takes a model-zoo name.
* :func:`from_reference` / :func:`to_reference`: weights in the layout of a published
  implementation (see :mod:`refineseg.models.reference`), e.g. the authors' released RefineNet
  and Light-Weight RefineNet, or the founding document's single-stage model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from refineseg.errors import CheckpointError, file_error
from refineseg.models.config import ModelConfig
from refineseg.models.reference import ReferenceLayout
from refineseg.models.registry import build_model, model_spec
from refineseg.models.segmentation import CONFIG_NAME, WEIGHTS_NAME, SegmentationModel
from refineseg.models.weights import StateDict, WeightsSource, load_exact, load_weights_file, read_weights
from refineseg.models.zoo import resolve_checkpoint


def save_pretrained(model: SegmentationModel, directory: str | os.PathLike) -> None:
    """Same as ``model.save_pretrained(directory)``: ``model.safetensors`` + ``config.json``."""
    model.save_pretrained(directory)


def from_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a model saved by :meth:`SegmentationModel.save_pretrained`, in eval mode.

    ``directory`` may also be a model-zoo name (``refineseg zoo``, :mod:`refineseg.models.zoo`): the
    weights packaged with refineseg, loaded offline after a SHA-256 check. A folder of that name wins.
    """
    directory = resolve_checkpoint(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for required in (directory, config_path, weights_path):
        if not required.exists():
            raise file_error(CheckpointError, required, "not found (expected a directory written by save_pretrained)")
    try:
        config = ModelConfig.from_dict(json.loads(config_path.read_text()))
        model = build_model(config)
    except (ValueError, TypeError) as e:
        raise file_error(CheckpointError, config_path, f"invalid model config ({e})") from e
    load_exact(model, load_weights_file(weights_path), os.fspath(weights_path))
    return model.to(map_location).eval()


def _layout(name: str) -> ReferenceLayout:
    layout = model_spec(name).reference
    if layout is None:
        raise ValueError(f"{name}: no published reference layout for this model")
    return layout


def reference_key_map(model: SegmentationModel) -> dict[str, str]:
    """Our ``state_dict`` key -> the key in the model's published layout, for every tensor."""
    rename = _layout(model.config.name).rename
    return {k: rename(k) for k in model.state_dict()}


def to_reference(model: SegmentationModel) -> StateDict:
    """Our model's weights renamed to its published layout (the inverse of :func:`from_reference`)."""
    mapping = reference_key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


def from_reference(
    checkpoint: WeightsSource, name: str, num_classes: int | None = None, **options: Any
) -> SegmentationModel:
    """Build ``name`` and load weights saved in its published layout.

    ``checkpoint`` is a path (``.pth``/``.safetensors``) or a state dict in the layout of
    DrSleep/refinenet-pytorch (``refinenet*``), DrSleep/light-weight-refinenet (``lw_refinenet*``)
    or the founding document's code (``seed_refinenet*``). ``num_classes`` is read from the
    classifier when not given. Every key must be consumed with the right shape (tensors the
    layout keeps but the model never uses, such as a torchvision ``backbone.fc``, are dropped);
    otherwise :class:`CheckpointError` lists the keys.
    """
    layout = _layout(name)
    state, origin = read_weights(checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith(layout.unused_prefixes)}
    if num_classes is None:
        if layout.classifier not in state:
            raise file_error(
                CheckpointError, origin, f"no classifier weight {layout.classifier!r}; is this a {name} checkpoint?"
            )
        num_classes = int(state[layout.classifier].shape[0])
    model = build_model(ModelConfig(name=name, num_classes=num_classes, **options))
    load_exact(model, state, origin, layout.rename)
    return model
