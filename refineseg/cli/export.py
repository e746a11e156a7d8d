"""``refineseg export``: a checkpoint to ONNX (dynamic batch, height and width), optionally int8.

The command chains the library's steps (:mod:`refineseg.inference.export`,
:mod:`refineseg.inference.quantize`): tracing, validation, quantization and its check. Each step
shows progress (:class:`refineseg.utils.progress.Steps`); what torch.onnx, onnxscript and
onnxruntime print meanwhile is captured and shown only with ``--verbose`` or when the step fails.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from refineseg.cli.common import dataclass_command
from refineseg.data import read_image
from refineseg.inference.export import (
    FORMATS,
    OnnxSegmenter,
    export_onnx,
    import_export_dependencies,
    validate_onnx,
)
from refineseg.inference.quantize import (
    CALIBRATION_METHODS,
    argmax_agreement,
    calibration_files,
    calibration_input,
    quantize_onnx,
)
from refineseg.models import MIN_SIDE, from_pretrained
from refineseg.utils.config import build_config, option, required
from refineseg.utils.progress import Steps

INT8_CHECK_IMAGES = 8  # calibration images on which run_export compares int8 with fp32


@dataclass
class ExportConfig:
    """Everything ``refineseg export`` needs; one CLI flag / YAML key per field."""

    checkpoint: str = required("checkpoint directory written by save_pretrained (e.g. runs/train/best)")
    out: str = required("path of the exported file (e.g. model.onnx)")
    format: str = option("onnx", "export format", choices=FORMATS)
    opset: int = option(18, "ONNX opset version")
    height: int = option(
        512,
        "height of the example input used for tracing and of --int8 calibration images (the graph accepts any size)",
    )
    width: int = option(
        512, "width of the example input used for tracing and of --int8 calibration images (the graph accepts any size)"
    )
    check: bool = option(
        True,
        "compare onnxruntime with PyTorch outputs after exporting (and, with --int8, "
        "the int8 argmax with the fp32 one on calibration images)",
    )
    int8: bool = option(
        False,
        "write an int8 model (onnxruntime static quantization, QDQ) calibrated on "
        "--calibration; faster on CPUs, most with int8 dot-product instructions (AVX-512 VNNI)",
    )
    calibration: str | None = option(
        None,
        "--int8: folder of images representative of the inputs (e.g. a few "
        "training images); each is resized to cover --height x --width and cropped",
    )
    calibration_samples: int = option(32, "--int8: use at most this many calibration images (sorted by name)")
    calibration_method: str = option(
        "minmax",
        "--int8: activation ranges: observed min/max, 99.999th percentile or minimum KL divergence (slower)",
        choices=list(CALIBRATION_METHODS),
    )
    verbose: bool = option(
        False,
        "show what torch.onnx, onnxscript and onnxruntime print (by default hidden, and shown only when a step fails)",
    )

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.int8 and not self.calibration:
            raise ValueError("int8 needs calibration: a folder of images (--calibration DIR)")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {self.calibration_samples}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calibration_method!r}"
            )
        if self.opset < 18:
            raise ValueError(f"opset must be >= 18 (the torch.onnx exporter's minimum), got {self.opset}")
        if min(self.height, self.width) < MIN_SIDE:
            raise ValueError(f"height and width must be >= {MIN_SIDE}, got {self.height}x{self.width}")

    def step_names(self) -> list[str]:
        """The steps :func:`run_export` shows progress over."""
        names = ["tracing"] + (["validation"] if self.check else [])
        return names + (["quantization"] + (["int8 check"] if self.check else []) if self.int8 else [])


def _check_int8(config: ExportConfig, model, fp32_path: Path, int8_path: Path) -> str:
    """The line reporting int8 vs fp32 argmax agreement on a few calibration images."""
    files = calibration_files(config.calibration, INT8_CHECK_IMAGES)
    inputs = [
        calibration_input(read_image(f), config.height, config.width, model.config.mean, model.config.std)
        for f in files
    ]
    agreement = argmax_agreement(OnnxSegmenter(fp32_path), OnnxSegmenter(int8_path), inputs)
    return (
        f"check int8: argmax agreement with fp32 {100 * agreement:.2f}% on {len(files)} calibration images "
        "(held-out images are the real test: evaluate --backend onnxruntime)"
    )


def run_export(config: ExportConfig) -> Path:
    """Load ``config.checkpoint``, export it to ``config.out`` and optionally validate it.

    With ``config.int8`` the fp32 export goes to a temporary folder, is validated there, and
    :func:`refineseg.inference.quantize.quantize_onnx` writes the int8 model to ``config.out``.
    """
    import_export_dependencies("onnx", "onnxscript", "onnxruntime")
    if config.int8:
        calibration_files(config.calibration)  # a missing or empty folder fails now, not after the export
    model = from_pretrained(config.checkpoint)
    with (
        tempfile.TemporaryDirectory(prefix="refineseg-export-") as tmp,
        Steps(config.step_names(), "export", verbose=config.verbose) as steps,
    ):
        fp32_path = Path(tmp) / "fp32.onnx" if config.int8 else config.out
        with steps.step("tracing"):
            path = export_onnx(model, fp32_path, config.height, config.width, config.opset)
        if config.check:
            with steps.step("validation"):
                results = validate_onnx(model, path)
            for (h, w), r in results.items():
                steps.say(
                    f"check {h}x{w}: max abs diff {r['max_abs_diff']:.2e} (max |logit| "
                    f"{r['max_abs_logit']:.2f}), argmax agreement {100 * r['argmax_agreement']:.2f}%"
                )
        if config.int8:
            with steps.step("quantization"):
                path = quantize_onnx(
                    fp32_path,
                    config.out,
                    config.calibration,
                    model.config.mean,
                    model.config.std,
                    config.calibration_samples,
                    config.calibration_method,
                    config.height,
                    config.width,
                )
            if config.check:
                with steps.step("int8 check"):
                    line = _check_int8(config, model, fp32_path, path)
                steps.say(line)
    print(f"Wrote {path}")
    return path


def _run(args: argparse.Namespace) -> None:
    run_export(build_config(ExportConfig, args, args.config))


def register(sub) -> None:
    dataclass_command(
        sub, "export", "export a checkpoint to ONNX (dynamic batch, height and width)", ExportConfig, _run
    )
