"""ONNX export: onnxruntime matches PyTorch at the traced size and at other (odd, batched) sizes,
metadata round trip, OnnxSegmenter through refineseg.inference.predictor, run_export end to end."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import helpers  # noqa: E402
import onnx  # noqa: E402

import refineseg  # noqa: E402
from refineseg.cli.export import ExportConfig, run_export  # noqa: E402
from refineseg.errors import CheckpointError, RefineSegError  # noqa: E402
from refineseg.inference.export import OnnxSegmenter, export_onnx, validate_onnx  # noqa: E402
from refineseg.inference.predictor import predict_probabilities, segment  # noqa: E402

TRACED = (64, 64)
# (N, H, W): the traced size, odd sizes, a batch of 2, the smallest accepted side.
SHAPES = [(1, 64, 64), (1, 97, 130), (2, 80, 112), (1, 32, 45)]

# Each export traces the model symbolically (~10-20 s on a small CPU).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def make_model(name: str) -> refineseg.SegmentationModel:
    return helpers.make_model(name, warm_batch_norm=True)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """lw_refinenet18 exported by export_onnx: (model, path)."""
    model = make_model("lw_refinenet18")
    path = export_onnx(model, tmp_path_factory.mktemp("r18") / "model.onnx", *TRACED)
    return model, path


@pytest.fixture(params=["mbv2", "resnet"])
def exported(request):
    """(model, path): lw_refinenet_mbv2 exported by the CLI, lw_refinenet18 by export_onnx."""
    if request.param == "mbv2":
        exported_mbv2 = request.getfixturevalue("exported_mbv2")
        return exported_mbv2.model, exported_mbv2.path
    return request.getfixturevalue("resnet")


def test_cli_export_writes_one_checked_file_quietly(exported_mbv2):
    """`refineseg export`: weights inside the one file, its results on stdout, progress lines on stderr,
    none of the exporter's messages."""
    path = exported_mbv2.path
    assert path.name == "model.onnx" and path.is_file()
    assert not list(path.parent.glob("*.data"))
    out = exported_mbv2.stdout.splitlines()
    assert [line.split(":")[0] for line in out] == ["check 64x64", "check 97x130", f"Wrote {path}"], out
    err = exported_mbv2.stderr.splitlines()  # no terminal: a line per step, one every 10 s while it runs
    assert err[0] == "export: [1/2] tracing" and "export: [2/2] validation" in err, err
    assert all(line.startswith("export: ") for line in err), err
    assert err[-1].startswith("export: validation done (")


def test_graph_has_named_dynamic_axes(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    for value, name in ((graph.input[0], "image"), (graph.output[0], "logits")):
        dims = value.type.tensor_type.shape.dim
        assert value.name == name
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4


@pytest.mark.parametrize("n,h,w", SHAPES)
def test_onnxruntime_matches_pytorch(exported, n, h, w):
    model, path = exported
    segmenter = OnnxSegmenter(path, providers=["CPUExecutionProvider"])
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.no_grad():
        expected = model(x)
    got = segmenter(x)
    assert got.shape == expected.shape == (n, 4, h, w)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert expected.argmax(1).unique().numel() > 1  # the comparison is not trivially constant


def test_validate_onnx_reports_each_size(exported):
    model, path = exported
    results = validate_onnx(model, path, sizes=[TRACED, (97, 130)])
    assert set(results) == {TRACED, (97, 130)}
    for r in results.values():
        assert r["max_abs_diff"] <= 1e-4 and r["argmax_agreement"] == 1.0 and r["max_abs_logit"] > 0


def test_validate_onnx_raises_when_outputs_differ(exported_mbv2):
    model, _, path, _, _ = exported_mbv2
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.conv.bias[1] += 1.0
    with pytest.raises(RefineSegError, match="differs from PyTorch at 64x64"):
        validate_onnx(other, path, sizes=[TRACED])


def test_metadata_round_trip(exported):
    model, path = exported
    segmenter = OnnxSegmenter(path)
    assert segmenter.config == model.config
    assert segmenter.config.class_names == helpers.CLASS_NAMES and segmenter.config.palette == helpers.PALETTE
    assert segmenter.device == torch.device("cpu") and segmenter.eval() is segmenter


@pytest.mark.parametrize("options", [{}, {"mode": "slide", "crop": 64, "stride": 48}])
def test_onnx_segmenter_through_predict_probabilities(exported_mbv2, options):
    model, _, path, _, _ = exported_mbv2
    x = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(1))
    expected = predict_probabilities(model, x, **options)
    got = predict_probabilities(OnnxSegmenter(path), x, **options)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.allclose(got, expected, atol=1e-4)


def test_onnx_segmenter_refuses_small_inputs(exported_mbv2):
    with pytest.raises(ValueError, match=">= 32"):
        OnnxSegmenter(exported_mbv2.path)(torch.zeros(1, 3, 31, 64))


def test_onnx_segmenter_bad_files(exported_mbv2, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        OnnxSegmenter(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX model"):
        OnnxSegmenter(tmp_path / "junk.onnx")
    proto = onnx.load(str(exported_mbv2.path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match="no 'refineseg_config' metadata"):
        OnnxSegmenter(tmp_path / "plain.onnx")


def test_export_config_checks_options():
    with pytest.raises(ValueError, match="format"):
        ExportConfig(checkpoint="c", out="m.onnx", format="tflite")
    with pytest.raises(ValueError, match=">= 32"):
        ExportConfig(checkpoint="c", out="m.onnx", height=16)


def test_missing_dependency_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(RefineSegError, match=r"pip install 'refineseg\[export\]'"):
        run_export(ExportConfig(checkpoint=str(tmp_path), out=str(tmp_path / "m.onnx")))


@pytest.mark.slow
def test_cli_predict_with_onnxruntime_gives_the_torch_labels(exported_mbv2, tmp_path, run_cli):
    """`refineseg predict --backend onnxruntime` on the file `refineseg export` wrote gives the torch labels."""
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    args = ("--checkpoint", str(exported_mbv2.path), "--backend", "onnxruntime", "--out", str(tmp_path / "pred"))
    run_cli("predict", *args, str(tmp_path / "img.png"))
    labels = np.asarray(Image.open(tmp_path / "pred" / "img.png"))
    expected = segment(exported_mbv2.model, image)
    assert np.array_equal(labels, expected) and len(np.unique(expected)) > 1
