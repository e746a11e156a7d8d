"""int8 export: a briefly trained model quantized on a folder of images agrees with fp32 (argmax on
held-out images, val mIoU), keeps its metadata, and runs through evaluate/predict --backend onnxruntime."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import helpers  # noqa: E402
import onnx  # noqa: E402

from refineseg.cli.export import ExportConfig, run_export  # noqa: E402
from refineseg.data import SyntheticSegmentation, eval_transform, write_image  # noqa: E402
from refineseg.errors import DataError  # noqa: E402
from refineseg.inference.export import OnnxSegmenter  # noqa: E402
from refineseg.inference.quantize import calibration_files, calibration_input, quantize_onnx  # noqa: E402

SIZE = 64  # synthetic image side, export and calibration size
CALIBRATION = 16
HELD_OUT = 16

# One export + one quantization of lw_refinenet18 (~30-60 s on a small CPU).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """(fp32 torch model, int8 .onnx path, run_export stdout, root): the briefly trained model exported
    with --int8, calibrated on synthetic *train* images written to a folder."""
    root = tmp_path_factory.mktemp("int8")
    model = helpers.briefly_trained_model()
    model.save_pretrained(root / "ckpt")
    train = SyntheticSegmentation("train", num_samples=CALIBRATION, size=SIZE)
    (root / "calib").mkdir()
    for i in range(CALIBRATION):
        write_image(root / "calib" / f"{i:03d}.png", train.load_sample(i)[0])
    (root / "calib" / "notes.txt").write_text("not an image: ignored")
    config = ExportConfig(
        checkpoint=str(root / "ckpt"),
        out=str(root / "model.int8.onnx"),
        height=SIZE,
        width=SIZE,
        int8=True,
        calibration=str(root / "calib"),
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        path = run_export(config)
    return model, path, stdout.getvalue(), root


def held_out() -> tuple[torch.Tensor, np.ndarray]:
    """Normalized *val* images (n, 3, S, S) (not used for calibration) and their masks (n, S, S)."""
    val = SyntheticSegmentation("val", num_samples=HELD_OUT, size=SIZE, transform=eval_transform())
    images, masks = zip(*(val[i] for i in range(len(val))))
    return torch.stack(images), torch.stack(masks).numpy()


def miou(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in prediction or ground truth (ignore label 255 skipped)."""
    valid = mask != 255
    ious = []
    for c in range(num_classes):
        p, g = (pred == c) & valid, (mask == c) & valid
        union = (p | g).sum()
        if union:
            ious.append((p & g).sum() / union)
    return float(np.mean(ious))


def test_run_export_writes_an_int8_file_and_checks_it(int8):
    _, path, stdout, root = int8
    assert path.is_file() and path.name == "model.int8.onnx"
    assert "check 64x64" in stdout  # the fp32 export was validated against PyTorch first
    line = next(s for s in stdout.splitlines() if s.startswith("check int8"))
    assert float(line.split("fp32 ")[1].split("%")[0]) >= 98.0
    assert not (root / "fp32.onnx").exists() and sorted(p.name for p in path.parent.glob("*.onnx")) == [path.name]


def test_int8_graph_is_quantized_and_keeps_the_metadata(int8):
    model, path, _, _ = int8
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 20  # the convolution kernels, stored as int8
    # The classifier (last Conv) keeps float weights: the logits are not rounded to 8 bits.
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    weight = next(t for t in proto.graph.initializer if t.name == last_conv.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT and weight.dims[0] == model.config.num_classes
    # About 4x smaller than the fp32 weights.
    assert path.stat().st_size < 0.4 * 4 * sum(p.numel() for p in model.parameters())
    segmenter = OnnxSegmenter(path)
    assert segmenter.config == model.config
    assert segmenter.quantization["method"] == "minmax" and segmenter.quantization["samples"] == CALIBRATION
    assert "int8" in repr(segmenter)


def test_int8_argmax_agrees_with_fp32_on_held_out_images(int8):
    model, path, _, _ = int8
    x, masks = held_out()
    with torch.no_grad():
        fp32 = model(x).argmax(1).numpy()
    got = OnnxSegmenter(path, providers=["CPUExecutionProvider"])(x).argmax(1).numpy()
    agreement = (got == fp32).mean()
    assert agreement >= 0.98, agreement
    assert len(np.unique(fp32)) >= 4 and (fp32 == masks).mean() > 0.7  # a model that segments, not a constant


def test_int8_val_miou_within_one_point_of_fp32(int8, tmp_path):
    from refineseg.cli.evaluate import EvalConfig, run_evaluate

    model, path, _, root = int8
    x, masks = held_out()
    with torch.no_grad():
        fp32 = miou(model(x).argmax(1).numpy(), masks, model.config.num_classes)
    quantized = miou(OnnxSegmenter(path)(x).argmax(1).numpy(), masks, model.config.num_classes)
    assert abs(quantized - fp32) <= 0.01, (quantized, fp32)
    # `evaluate --backend onnxruntime` scores the same predictions (the synthetic val split at this size).
    config = EvalConfig(
        checkpoint=str(path),
        backend="onnxruntime",
        dataset="synthetic",
        synthetic_val=HELD_OUT,
        synthetic_size=SIZE,
        out=str(tmp_path / "eval"),
        confusion_png=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_evaluate(config)
    assert summary["mIoU"] == pytest.approx(quantized, abs=1e-6)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_predict_runs_the_int8_file_tiled_and_batched(int8, tmp_path):
    from PIL import Image

    from refineseg.cli.predict import PredictConfig, run_predict
    from refineseg.inference.tiling import predict_tiled

    _, path, _, _ = int8
    image = SyntheticSegmentation("test", num_samples=1, size=(90, 130)).load_sample(0)[0]
    Image.fromarray(image).save(tmp_path / "scene.png")
    written = run_predict(
        PredictConfig(
            checkpoint=str(path),
            backend="onnxruntime",
            inputs=[str(tmp_path / "scene.png")],
            out=str(tmp_path / "pred"),
            tile=64,
            overlap=16,
            tile_batch=4,
            overlay=False,
        )
    )
    expected = predict_tiled(OnnxSegmenter(path), image, tile=64, overlap=16, progress=False)  # one tile at a time
    assert np.array_equal(np.asarray(Image.open(written[0])), expected)


def test_calibration_input_resizes_to_cover_and_crops_the_centre():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    got = calibration_input(image, 64, 64, mean, std)
    # Halving with bilinear interpolation (no antialias) averages 2x2 blocks; 96 wide -> centre 64 columns.
    normalized = (image / 255.0 - np.array(mean)) / np.array(std)
    halved = normalized.reshape(64, 2, 96, 2, 3).mean((1, 3))
    expected = halved[:, 16:80].transpose(2, 0, 1)[None]
    assert got.shape == (1, 3, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    small = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # upscaled to cover 64x64, then cropped
    assert calibration_input(small, 64, 64, mean, std).shape == (1, 3, 64, 64)


def test_calibration_folder_errors(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'}: calibration folder not found"):
        calibration_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="calibration folder holds no images"):
        calibration_files(tmp_path / "empty")
    for name in ("b.png", "a.jpg", "c.png"):
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    assert [p.name for p in calibration_files(tmp_path, samples=2)] == ["a.jpg", "b.png"]


def test_int8_options_are_checked(int8, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        ExportConfig(checkpoint="c", out="m.onnx", int8=True)
    with pytest.raises(ValueError, match="calibration_samples"):
        ExportConfig(checkpoint="c", out="m.onnx", int8=True, calibration="d", calibration_samples=0)
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx(int8[1], tmp_path / "q.onnx", int8[3] / "calib", (0.5,) * 3, (0.5,) * 3, method="median")
