"""The fast training paths give the same training: channels-last equals contiguous up to float
rounding, checkpoints of channels-last models load identically, ``--amp auto`` picks what it documents.

No timings here: benchmarks/training.py measures the speed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from helpers import saved_weights, synthetic_batch

import refineseg
from refineseg.data import SYNTHETIC_CLASSES
from refineseg.training import TrainConfig, optimizer_step, train
from refineseg.training.config import cpu_has_native_bf16, resolve_amp
from refineseg.utils import device as device_module

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> refineseg.SegmentationModel:
    """LW-RefineNet-MobileNetV2 with frozen backbone BN and no dropout, in train mode.

    Frozen BN as in the DDP and accumulation tests: train-mode BN over a 2-image batch normalizes
    the 2×2 maps of the last stages over 8 values, and ReLU6 clips after it; float rounding then
    flips clipped units and a few steps diverge (contiguous fp32 against float64 too). The forward
    pass with batch statistics is compared on its own below.
    """
    torch.manual_seed(0)
    return refineseg.create_model(
        "lw_refinenet_mbv2", num_classes=len(SYNTHETIC_CLASSES), dropout=0.0, freeze_bn=True
    ).train()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def three_sgd_steps(channels_last: bool) -> tuple[dict[str, torch.Tensor], list[float], list[bool]]:
    """Weights and losses after 3 SGD steps on the same 2-image batch; whether the net saw NHWC inputs."""
    model = tiny_model()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    seen = []
    model.encoder.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batch = synthetic_batch(2)
    losses = [optimizer_step(model, iter([batch]), optimizer, step=s, channels_last=channels_last) for s in (1, 2, 3)]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, seen


def test_channels_last_sgd_steps_equal_contiguous_ones():
    reference, ref_losses, ref_seen = three_sgd_steps(channels_last=False)
    fast, fast_losses, fast_seen = three_sgd_steps(channels_last=True)
    assert ref_seen == [False] * 3 and fast_seen == [True] * 3  # the two runs really took different paths
    assert fast_losses == pytest.approx(ref_losses, rel=1e-4)
    initial = tiny_model().state_dict()
    for key, value in reference.items():
        if value.is_floating_point():
            assert relative_error(fast[key], value) < 1e-4, key
    assert not torch.equal(reference["head.conv.weight"], initial["head.conv.weight"])  # training moved it
    assert fast["head.conv.weight"].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_forward_with_train_mode_batch_norm_equals_contiguous():
    # Batch statistics of 2 images of 128 px. On CPU the channels-last BN kernel sums its statistics
    # less exactly (~40× the contiguous kernel's error against float64 when mean/std ≈ 30), so the
    # tolerance is 1e-4, not 1e-6.
    images, masks = synthetic_batch(2, size=128)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = refineseg.create_model("lw_refinenet_mbv2", num_classes=len(SYNTHETIC_CLASSES), dropout=0.0).train()
        x = images
        if channels_last:
            model.to(memory_format=torch.channels_last)
            x = images.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        results.append((logits.detach(), torch.nn.functional.cross_entropy(logits, masks, ignore_index=255).item()))
    (logits_a, loss_a), (logits_b, loss_b) = results
    assert relative_error(logits_b, logits_a) < 1e-4
    assert loss_b == pytest.approx(loss_a, rel=1e-4)


def test_channels_last_model_saves_and_loads_the_same_values(tmp_path):
    model = tiny_model().to(memory_format=torch.channels_last)
    weight = model.state_dict()["encoder.features.0.0.weight"]  # the stem's 3×3 conv: (32, 3, 3, 3)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    model.save_pretrained(tmp_path / "m")
    stored = saved_weights(tmp_path / "m")
    state = model.state_dict()
    assert stored.keys() == state.keys()
    for key, value in state.items():  # same numbers at the same (N, C, H, W) indices, whatever the layout
        assert torch.equal(stored[key], value), key
        assert stored[key].is_contiguous(), key
    loaded = refineseg.from_pretrained(tmp_path / "m")
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_train_channels_last_equals_contiguous_and_records_the_resolved_amp(tmp_path):
    base = TrainConfig(
        model="lw_refinenet_mbv2",
        dataset="synthetic",
        crop=64,
        batch_size=2,
        lr=0.002,
        iters=2,
        synthetic_train=4,
        synthetic_val=2,
        synthetic_size=64,
        workers=0,
        val_interval=0,
        ckpt_interval=2,
        dropout=0.0,
        freeze_bn=True,
        amp="none",
        out=str(tmp_path / "contiguous"),
        channels_last=False,
    )
    train(base)
    train(dataclasses.replace(base, channels_last=True, out=str(tmp_path / "nhwc")))
    a, b = saved_weights(tmp_path / "contiguous" / "last"), saved_weights(tmp_path / "nhwc" / "last")
    assert all(relative_error(b[k], a[k]) < 1e-4 for k in a if a[k].is_floating_point())
    assert yaml.safe_load((tmp_path / "nhwc" / "config.yaml").read_text())["channels_last"] is True

    train(dataclasses.replace(base, amp="auto", iters=1, ckpt_interval=1, out=str(tmp_path / "auto")))
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["amp"]
    assert recorded == ("bf16" if cpu_has_native_bf16() else "none")  # the choice, not "auto"


X86_FLAGS = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n"
ARM_FEATURES = "processor\t: 0\nFeatures\t: fp asimd sve {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        (X86_FLAGS.format(extra="avx512_bf16 avx512_vnni"), True),  # AMD Zen 4, Intel Cooper Lake
        (X86_FLAGS.format(extra="amx_bf16 amx_tile"), True),  # Intel Sapphire Rapids
        (X86_FLAGS.format(extra="avx512_vnni"), False),  # Skylake/Cascade Lake: bf16 only emulated
        (ARM_FEATURES.format(extra="bf16 i8mm"), True),  # Graviton 3, Neoverse V1
        (ARM_FEATURES.format(extra="i8mm"), False),
        ("", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    if native and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN: never native")
    assert cpu_has_native_bf16(cpuinfo) is native


@pytest.mark.parametrize("capability, expected", [((7, 5), "none"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_amp_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp("auto", torch.device("cuda", 0)) == expected
    assert resolve_amp("fp16", torch.device("cuda", 0)) == "fp16"  # explicit choices are kept


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    assert resolve_amp("auto", torch.device("cpu")) == ("bf16" if native else "none")
    assert resolve_amp("none", torch.device("cpu")) == "none"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_defaults_are_the_fast_path():
    # Channels-last with --amp auto (BENCHMARKS.md, "Training paths": 2.5-3x one step, 3x end to end
    # on this CPU). Every test that leaves them unset runs this path: test_convergence.py (every family
    # converges), test_preemption.py and test_training.py (bit-identical resume).
    config = TrainConfig()
    assert config.channels_last is True and config.amp == "auto"
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")
