"""int8 post-training quantization of an exported ONNX model, calibrated on a folder of images.

:func:`quantize_onnx` turns the fp32 ``.onnx`` file of :func:`refineseg.inference.export.export_onnx` into
an int8 one with onnxruntime's static quantizer: QDQ format (QuantizeLinear/DequantizeLinear
pairs that onnxruntime's CPU provider fuses into integer kernels such as QLinearConv), weights
int8 per output channel, activations uint8 with ranges measured on calibration images. The
graph is first pre-processed (onnxruntime's ``quant_pre_process``: shape inference and graph
optimizations, which fold BatchNorm into the convolutions before ranges are measured).

Calibration images come from a folder: each is resized (aspect kept, bilinear) to cover the
export size, centre-cropped to it and normalized with the mean/std stored in the model's
metadata, i.e. exactly what inference feeds the model. The result keeps the fp32 file's
metadata (classes, palette, normalization), so :class:`~refineseg.inference.export.OnnxSegmenter` and
``predict/evaluate --backend onnxruntime`` run it unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from refineseg.data import IMAGE_SUFFIXES, read_image
from refineseg.errors import DataError, MissingDependencyError, file_error
from refineseg.inference.predictor import preprocess

# --calibration-method -> onnxruntime CalibrationMethod member
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
QUANTIZATION_KEY = "refineseg_quantization"  # metadata of int8 files: how they were quantized (JSON)
_PASS_THROUGH = {"Resize", "Upsample", "Cast", "Identity", "Reshape", "Slice", "Transpose"}


def calibration_files(directory: str | os.PathLike, samples: int | None = None) -> list[Path]:
    """The image files of ``directory`` (sorted, not recursive), the first ``samples`` of them.

    Raises DataError when the folder does not exist or holds no images.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise file_error(DataError, directory, "calibration folder not found")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise file_error(DataError, directory, f"calibration folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files[:samples] if samples else files


def calibration_input(
    image: np.ndarray, height: int, width: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """(H, W, 3) uint8 image -> normalized (1, 3, height, width) float32: resized to cover, centre-cropped."""
    x = preprocess(image, mean, std)
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[:, :, top : top + height, left : left + width].contiguous().numpy()


def _reader_class() -> type:
    """A CalibrationDataReader subclass (built lazily: onnxruntime is an optional dependency)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        """Feeds one image a call, read when asked; ``set_range`` lets onnxruntime go in strides
        (ranges are merged stride by stride, so only one image's intermediate tensors are held)."""

        def __init__(
            self,
            files: Sequence[Path],
            input_name: str,
            height: int,
            width: int,
            mean: Sequence[float],
            std: Sequence[float],
        ) -> None:
            self.files, self.input_name = list(files), input_name
            self.size, self.mean, self.std = (height, width), mean, std
            self.set_range(0, len(self.files))

        def __len__(self) -> int:
            return len(self.files)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.position, self.end = start_index, end_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= self.end:
                return None
            image = read_image(self.files[self.position])
            self.position += 1
            return {self.input_name: calibration_input(image, *self.size, self.mean, self.std)}

    return ImageCalibrationReader


def _head_nodes(proto: Any) -> list[str]:
    """Names of the nodes from the last Conv to the output (the classifier and the final resize).

    They stay fp32: quantizing the logits themselves would round near-ties between classes, and
    the classifier is a tiny share of the compute. Empty (quantize everything) when the output is
    not a Conv followed only by resizes, casts and reshapes.
    """
    producers = {out: node for node in proto.graph.node for out in node.output}
    names = []
    node = producers.get(proto.graph.output[0].name)
    while node is not None and node.op_type in _PASS_THROUGH:
        names.append(node.name)
        node = producers.get(node.input[0])  # the data input (the others are sizes, scales ...)
    return names + [node.name] if node is not None and node.op_type == "Conv" else []


def quantize_onnx(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    calibration: str | os.PathLike,
    mean: Sequence[float],
    std: Sequence[float],
    samples: int = 32,
    method: str = "minmax",
    height: int = 512,
    width: int = 512,
    per_channel: bool = True,
    fp32_head: bool = True,
    activation_type: str = "uint8",
) -> Path:
    """Quantize the fp32 ONNX file ``model_path`` to int8 (QDQ) at ``out``; returns ``out``.

    Activation ranges come from up to ``samples`` images of the folder ``calibration`` prepared
    by :func:`calibration_input` at ``height`` × ``width`` (the graph still accepts any size)
    with the model's normalization ``mean``/``std`` (``OnnxSegmenter(model_path).config``).
    The metadata of ``model_path`` (the model config) is copied; ``refineseg_quantization`` is added.
    ``method``: ``minmax`` (the observed range), ``percentile`` (99.999th percentile of |x|) or
    ``entropy`` (the range minimizing KL divergence). ``fp32_head`` keeps the classifier conv and
    the final resize in fp32 (see :func:`_head_nodes`).
    """
    onnx = _import_quantization()
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if activation_type not in ("uint8", "int8"):
        raise ValueError(f"activation_type must be uint8 or int8, got {activation_type!r}")
    model_path, out = Path(model_path), Path(out)
    source = onnx.load(os.fspath(model_path))
    metadata = {p.key: p.value for p in source.metadata_props}
    files = calibration_files(calibration, samples)
    reader = _reader_class()(files, source.graph.input[0].name, height, width, mean, std)

    out.parent.mkdir(parents=True, exist_ok=True)
    proto = _quantize_static(
        model_path, reader, method=method, activation_type=activation_type, per_channel=per_channel, fp32_head=fp32_head
    )
    info = {
        "method": method,
        "samples": len(files),
        "activations": activation_type,
        "weights": "int8",
        "per_channel": per_channel,
        "fp32_head": fp32_head,
        "calibration_size": [height, width],
    }
    onnx.helper.set_model_props(proto, {**metadata, QUANTIZATION_KEY: json.dumps(info)})
    onnx.save_model(proto, os.fspath(out))
    return out


def _import_quantization() -> Any:
    """The ``onnx`` module, once it and onnxruntime's quantization tools are known to import.

    Raises MissingDependencyError naming the missing package and the extra that installs it.
    """
    try:  # the names _quantize_static uses, imported here so that a missing one fails before any work
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: F401
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"int8 export needs onnx and onnxruntime ({e.name} is not installed): pip install 'refineseg[export]'"
        ) from None
    return onnx


def _quantize_static(
    model_path: Path, reader: Any, *, method: str, activation_type: str, per_channel: bool, fp32_head: bool
) -> Any:
    """Pre-process ``model_path`` and quantize it statically (QDQ) with the calibration ``reader``.

    The intermediate files live in a temporary directory; returns the quantized ``onnx.ModelProto``
    (without the source's metadata, which :func:`quantize_onnx` adds back).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="refineseg-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(os.fspath(model_path), os.fspath(prepared), skip_symbolic_shape=True)
        exclude = _head_nodes(onnx.load(os.fspath(prepared))) if fp32_head else []
        quantized = Path(tmp) / "quantized.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
            quantize_static(
                os.fspath(prepared),
                os.fspath(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=exclude,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                extra_options={"CalibStridedMinMax": 1},  # ranges merged image by image: bounded memory
            )
        return onnx.load(os.fspath(quantized))


def argmax_agreement(reference: Any, candidate: Any, inputs: Sequence[np.ndarray]) -> float:
    """Share of pixels where two models (``x -> logits`` callables) give the same class over ``inputs``."""
    same = total = 0
    for x in inputs:
        x = torch.from_numpy(x)
        with torch.inference_mode():
            a, b = reference(x).argmax(1), candidate(x).argmax(1)
        same += (a == b).sum().item()
        total += a.numel()
    return same / total
