"""Inference optimizations: BN folding, channels-last, bf16 autocast and torch.compile."""

from __future__ import annotations

import pytest
import torch
from helpers import briefly_trained_model, synthetic_batch
from torch import nn

import refineseg
from refineseg.inference.optimize import Float32, InferenceModel, fold_batch_norm, optimize_for_inference
from refineseg.inference.predictor import predict_probabilities

NUM_CLASSES = 5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))
                if m.affine:
                    m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def random_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batch_norm(refineseg.create_model(name, num_classes=NUM_CLASSES))


def images(size: tuple[int, int] = (64, 96), n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["lw_refinenet_mbv2", "lw_refinenet18", "refinenet18", "seed_refinenet50"])
def test_fold_batch_norm_matches_eval_model(name):
    model = random_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_count = count_batch_norms(model)
    assert bn_count > 0

    folded = fold_batch_norm(model)
    assert count_batch_norms(folded) == 0
    assert folded.batch_norm_folded and not folded.training
    x = images()
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < 1e-4
    # The original is untouched.
    assert count_batch_norms(model) == bn_count
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fold_batch_norm_handles_grouped_and_biased_convs():
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.BatchNorm2d(4, affine=False),
    )
    randomize_batch_norm(block)
    block[4].running_mean.normal_()
    folded = fold_batch_norm(block)
    x = torch.randn(2, 8, 10, 10)
    assert relative_error(folded(x), block(x)) < 1e-5
    assert isinstance(folded[1], nn.Identity) and folded[0].groups == 8


def test_optimized_model_is_a_drop_in_replacement():
    model = random_model("lw_refinenet18")
    fast = optimize_for_inference(model)  # fold BN + channels-last, float32
    assert isinstance(fast, InferenceModel) and not fast.training
    assert fast.config == model.config and fast.num_classes == NUM_CLASSES
    assert fast.device == torch.device("cpu") == next(fast.parameters()).device
    assert count_batch_norms(fast) == 0 and count_batch_norms(model) > 0
    assert fast.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)

    x = images()
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == (2, NUM_CLASSES, 64, 96) and out.is_contiguous()
    with torch.no_grad():
        reference = model(x)
        assert relative_error(out, reference) < 1e-4
        assert relative_error(fast(x, upsample=False), model(x, upsample=False)) < 1e-4
        slide = predict_probabilities(fast, x, mode="slide", crop=64, stride=32)
        assert relative_error(slide, predict_probabilities(model, x, mode="slide", crop=64, stride=32)) < 1e-4
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()


def test_channels_last_without_folding():
    model = random_model("lw_refinenet_mbv2")
    fast = optimize_for_inference(model, fold_bn=False, channels_last=True)
    assert count_batch_norms(fast) == count_batch_norms(model)
    x = images()
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < 1e-4


def test_dtype_validation():
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="CUDA"):
        optimize_for_inference(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        optimize_for_inference(model, dtype=torch.int8)
    assert optimize_for_inference(model, dtype=torch.float32).dtype is None


@pytest.fixture(scope="module")
def trained_model() -> nn.Module:
    return briefly_trained_model()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch(8, split="val")


def test_bf16_predictions_agree_with_float32(trained_model, held_out):
    x, y = held_out
    with torch.no_grad():
        reference = trained_model(x).argmax(1)
    valid = y != 255
    assert (reference == y)[valid].float().mean() > 0.7  # the model did learn something (about 0.8)
    for fold_bn in (False, True):
        fast = optimize_for_inference(trained_model, dtype=torch.bfloat16, fold_bn=fold_bn)
        out = fast(x)
        assert out.dtype == torch.float32
        agreement = (out.argmax(1) == reference).float().mean().item()
        assert agreement >= 0.99, (fold_bn, agreement)


@pytest.mark.slow
def test_compiled_model_matches_eager_at_two_sizes():
    model = random_model("lw_refinenet_mbv2")
    fast = optimize_for_inference(model, compile=True)
    with torch.no_grad():
        for size in ((64, 64), (64, 96)):
            x = images(size, n=1)
            assert relative_error(fast(x), model(x)) < 1e-4


def test_evaluate_and_predict_use_the_fast_path_by_default():
    from refineseg.cli.evaluate import EvalConfig
    from refineseg.cli.predict import PredictConfig
    from refineseg.inference.optimize import InferenceModel

    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=3)
    for config in (EvalConfig(checkpoint="c", dataset="synthetic"), PredictConfig(checkpoint="c", inputs=["x"])):
        assert isinstance(config.prepare(model), InferenceModel)
    plain = PredictConfig(checkpoint="c", inputs=["x"], optimize=False, precision="fp32").prepare(model)
    assert plain is model and not model.training
    bf16 = PredictConfig(checkpoint="c", inputs=["x"], precision="bf16").prepare(model)
    assert isinstance(bf16, InferenceModel) and bf16.dtype == torch.bfloat16


X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd sve {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (X86_CPUINFO.format(extra="avx512_bf16 avx512_vnni"), "bf16"),  # AMD Zen 4, Intel Cooper Lake
        (X86_CPUINFO.format(extra="amx_bf16 amx_tile"), "bf16"),  # Intel Sapphire Rapids
        (ARM_CPUINFO.format(extra="bf16 i8mm"), "bf16"),  # Graviton 3
        (X86_CPUINFO.format(extra="avx512_vnni"), "fp32"),  # Skylake/Cascade Lake: bf16 only emulated
        (ARM_CPUINFO.format(extra="i8mm"), "fp32"),
        ("", "fp32"),
    ],
)
def test_precision_auto_on_cpu_follows_the_cpuinfo_flags(tmp_path, monkeypatch, caplog, cpuinfo, expected):
    from refineseg.cli.predict import PredictConfig
    from refineseg.inference.options import resolve_precision
    from refineseg.utils import device as device_module

    if expected == "bf16" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN: bf16 is never native")
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "cpuinfo")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    for explicit in ("fp32", "bf16"):  # explicit choices are kept
        assert resolve_precision(explicit, torch.device("cpu")) == explicit

    config = PredictConfig(checkpoint="c", inputs=["x"])
    assert config.precision == "auto"  # the default
    with caplog.at_level("INFO", logger="refineseg.inference"):
        runner = config.prepare(refineseg.create_model("lw_refinenet_mbv2", num_classes=3))
    assert config.precision == expected  # resolved once: the options now hold the choice
    assert runner.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"precision: {expected}"]


def test_precision_auto_reads_no_cpuinfo_file_as_fp32(tmp_path, monkeypatch):
    from refineseg.inference.options import resolve_precision
    from refineseg.utils import device as device_module

    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "missing")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_precision_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    from refineseg.inference.options import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("fp16", torch.device("cuda", 0)) == "fp16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4", torch.device("cuda", 0))


def test_evaluate_predict_and_serve_default_to_precision_auto():
    from refineseg.cli.evaluate import EvalConfig
    from refineseg.cli.predict import PredictConfig
    from refineseg.serve.config import ServeConfig

    for config in (
        EvalConfig(checkpoint="c", dataset="synthetic"),
        PredictConfig(checkpoint="c", inputs=["x"]),
        ServeConfig(checkpoint="c"),
    ):
        assert config.precision == "auto"


@pytest.mark.parametrize(
    "name, stem",
    [
        ("lw_refinenet18", ["conv1"]),
        ("refinenet101", ["conv1"]),
        ("lw_refinenet_mbv2", ["features.0.0", "features.1.conv.0.0"]),
    ],
)
def test_reduced_precision_keeps_the_encoders_stride_2_stem_in_float32(name, stem):
    """The stride-2 stem runs in fp32 under bf16 (most of the label disagreement, little of the time);
    every later convolution in bf16. Nothing is wrapped on the fp32 path."""
    model = refineseg.create_model(name, num_classes=NUM_CLASSES).eval()
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    wrapped = [n for n, m in fast.model.encoder.named_modules() if isinstance(m, Float32)]
    assert wrapped[: len(stem)] == stem
    outputs: dict[str, tuple[torch.dtype, int]] = {}

    def record(name: str):
        def hook(module, inputs, out) -> None:  # None: the output is left as it is
            outputs[name] = (out.dtype, out.shape[-1])

        return hook

    hooks = [
        m.register_forward_hook(record(n))
        for n, m in fast.model.encoder.named_modules()
        if isinstance(m, (Float32, nn.Conv2d))
    ]
    fast(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert all(outputs[n] == (torch.float32, outputs[n][1]) and outputs[n][1] >= 32 for n in wrapped)
    later = [dtype for n, (dtype, width) in outputs.items() if width <= 16]
    assert later and all(dtype == torch.bfloat16 for dtype in later)
    plain = optimize_for_inference(model)
    assert not any(isinstance(m, Float32) for m in plain.modules())
