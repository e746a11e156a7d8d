"""ONNX export of segmentation models and an onnxruntime-backed stand-in for the PyTorch model.

* :func:`export_onnx`: a model -> ``.onnx`` file with input ``image`` (N, 3, H, W) and output
  ``logits`` (N, C, H, W); batch, height and width are dynamic (any H, W >= 32). The model
  config (classes, palette, normalization) is stored as metadata under ``refineseg_config``.
* :func:`validate_onnx`: onnxruntime vs PyTorch on random inputs of a few sizes.
* :class:`OnnxSegmenter`: loads an exported file and is called like the model, ``logits = m(x)``,
  so :mod:`refineseg.inference.predictor` works with it unchanged.

``refineseg export`` (:mod:`refineseg.cli.export`) chains these, and with ``--int8`` quantizes the
export with :func:`refineseg.inference.quantize.quantize_onnx` (same interface, int8 inside).

Needs the optional dependencies ``onnx``, ``onnxscript`` and ``onnxruntime``
(``pip install 'refineseg[export]'``); :class:`OnnxSegmenter` needs only ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refineseg.errors import CheckpointError, MissingDependencyError, RefineSegError, file_error
from refineseg.inference.quantize import QUANTIZATION_KEY
from refineseg.models import MIN_SIDE, ModelConfig
from refineseg.utils.device import model_device
from refineseg.version import __version__

FORMATS = ["onnx"]
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_KEY = "refineseg_config"
VALIDATION_SIZES = ((64, 64), (97, 130))


def import_export_dependencies(*modules: str) -> list[Any]:
    """Import optional export dependencies, or raise MissingDependencyError naming the pip command."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX support needs {', '.join(modules)} ({e.name} is not installed): pip install 'refineseg[export]'"
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (skipped torchvision ops, internal deprecation warnings)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_dynamic(proto: Any, path: Path) -> None:
    """Refuse a graph whose batch, height or width got fixed to the example's values."""
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        fixed = [i for i in (0, 2, 3) if not dims[i].dim_param]
        if fixed:
            shape = [d.dim_param or d.dim_value for d in dims]
            raise file_error(
                RefineSegError,
                path,
                f"export fixed axes {fixed} of {value.name!r} (shape {shape}); "
                "the model has size-dependent control flow that cannot be exported",
            )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    height: int = 512,
    width: int = 512,
    opset: int = 18,
) -> Path:
    """Export ``model`` (a SegmentationModel) to an ONNX file at ``path``; returns the path.

    A copy of the model is traced in eval mode, fp32, on the CPU, with torch.export
    (``torch.onnx.export(..., dynamo=True)``) on an example batch of (2, 3, height, width).
    Batch, height and width are symbolic ``Dim``s, the two sides bounded below by 32, so the
    model's own ``< 32`` input check is decided at trace time and internal resizes keep sizes
    taken from other tensors' shapes: the graph is valid for any batch and any H, W >= 32.
    The model config is stored as JSON in the metadata under ``refineseg_config``.
    """
    onnx, _, _ = import_export_dependencies("onnx", "onnxscript", "onnxruntime")
    from torch.export import Dim

    if min(height, width) < MIN_SIDE:
        raise ValueError(f"height and width must be >= {MIN_SIDE}, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.randn(2, 3, height, width)
    # Example batch 2, not 1: export specializes example dimensions that are 0 or 1.
    axes = {0: Dim("batch", min=1), 2: Dim("height", min=MIN_SIDE), 3: Dim("width", min=MIN_SIDE)}
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=(axes,),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    _check_dynamic(proto, path)
    # Drop per-node tracing notes (Python stack traces with local paths, module names): size only.
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(config.to_dict()), "refineseg_version": __version__})
    onnx.save_model(proto, os.fspath(path))
    return path


def validate_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    batch: int = 2,
    seed: int = 0,
) -> dict[tuple[int, int], dict[str, float]]:
    """Compare onnxruntime (CPU) with ``model`` on random (batch, 3, H, W) inputs of each size.

    Use a CPU fp32 model (a CUDA model's TF32 convolutions alone differ by more than 1e-4).
    Returns ``{(H, W): {"max_abs_diff", "max_abs_logit", "argmax_agreement"}}``. Raises
    RefineSegError when the difference exceeds ``1e-4 * max(1, max |logit|)`` or when the argmax
    differs at a pixel whose top-2 logit margin is wider than twice that tolerance (narrower
    margins are ties that rounding alone may flip).
    """
    (ort,) = import_export_dependencies("onnxruntime")
    session = _session(ort, Path(path), ["CPUExecutionProvider"])
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    results = {}
    was_training = model.training
    model.eval()
    try:
        for h, w in sizes:
            x = torch.randn(batch, 3, h, w, generator=generator)
            with torch.no_grad():
                expected = model(x.to(device)).float().cpu()
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
            if got.shape != expected.shape:
                raise file_error(
                    RefineSegError,
                    path,
                    f"onnxruntime output shape {tuple(got.shape)} for input "
                    f"{h}x{w}, PyTorch gives {tuple(expected.shape)}",
                )
            diff = (got - expected).abs().max().item()
            scale = expected.abs().max().item()
            tolerance = 1e-4 * max(1.0, scale)
            mismatch = got.argmax(1) != expected.argmax(1)
            unexplained = 0
            if mismatch.any():
                top2 = expected.topk(2, dim=1).values
                unexplained = (mismatch & (top2[:, 0] - top2[:, 1] > 2 * tolerance)).sum().item()
            results[(h, w)] = {
                "max_abs_diff": diff,
                "max_abs_logit": scale,
                "argmax_agreement": 1.0 - mismatch.float().mean().item(),
            }
            if diff > tolerance or unexplained:
                raise file_error(
                    RefineSegError,
                    path,
                    f"onnxruntime differs from PyTorch at {h}x{w}: max abs diff "
                    f"{diff:.3g} (tolerance {tolerance:.3g}), {unexplained} pixels with another class",
                )
    finally:
        model.train(was_training)
    return results


def _default_providers(ort: Any) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(ort: Any, path: Path, providers: Sequence[str] | None) -> Any:
    """An onnxruntime session for the ``.onnx`` file at ``path``; CheckpointError names what is wrong."""
    if path.is_dir():
        raise file_error(
            CheckpointError,
            path,
            "is a checkpoint directory; --backend onnxruntime runs an .onnx "
            f"file: export one with 'refineseg export --checkpoint {path} --out model.onnx'",
        )
    if not path.is_file():
        raise file_error(CheckpointError, path, "no such file")
    try:
        return ort.InferenceSession(os.fspath(path), providers=list(providers or _default_providers(ort)))
    except Exception as e:  # not an ONNX file, unknown provider, unsupported opset ...
        raise file_error(
            CheckpointError, path, f"cannot load ONNX model ({type(e).__name__}: {e})".splitlines()[0]
        ) from None


class OnnxSegmenter:
    """An exported model run by onnxruntime, called like the PyTorch model: ``logits = m(x)``.

    ``x`` is a normalized float batch (N, 3, H, W) with H, W >= 32; the result is a float32
    tensor of logits (N, C, H, W) on ``x``'s device. ``config`` is the :class:`ModelConfig`
    stored in the file. onnxruntime takes host memory, so ``device`` is always the CPU
    (inputs are copied there; CUDAExecutionProvider, when available, moves them itself).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        (ort,) = import_export_dependencies("onnxruntime")
        self.path = Path(path)
        self.session = _session(ort, self.path, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in metadata:
            raise file_error(
                CheckpointError, self.path, f"no {METADATA_KEY!r} metadata; export it with refineseg export"
            )
        try:
            self.config = ModelConfig.from_dict(json.loads(metadata[METADATA_KEY]))
        except (ValueError, TypeError) as e:
            raise file_error(CheckpointError, self.path, f"invalid {METADATA_KEY!r} metadata ({e})") from None
        # How an int8 file was quantized (refineseg.inference.quantize); None for fp32 files.
        self.quantization = json.loads(metadata[QUANTIZATION_KEY]) if QUANTIZATION_KEY in metadata else None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, preferred first."""
        return self.session.get_providers()

    training = False  # always in inference mode; for code that saves and restores ``model.training``

    def eval(self) -> OnnxSegmenter:
        """No-op, for code that calls ``model.eval()``."""
        return self

    def train(self, mode: bool = True) -> OnnxSegmenter:
        """No-op (an exported graph has no training mode), for code that restores ``model.train(...)``."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"input sides must be >= {MIN_SIDE} pixels, got {tuple(x.shape[-2:])}")
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: image})[0]
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        precision = "int8" if self.quantization else "fp32"
        return f"OnnxSegmenter({os.fspath(self.path)!r}, {self.config.name}, {precision}, providers={self.providers})"
