"""The CUDA paths: mixed-precision and channels-last training, NCCL/DDP with SyncBatchNorm (and a
preemption stop agreed over NCCL), evaluation, tiled prediction, fp16/bf16 and compiled inference,
onnxruntime's CUDA provider.

Every test is marked ``cuda`` and skipped without a GPU: ``make gpu-check`` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import TINY_TRAIN, briefly_trained_model, free_port, make_model, synthetic_batch, tiny_train_config
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import refineseg
from refineseg.data import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from refineseg.inference.optimize import optimize_for_inference
from refineseg.inference.predictor import segment
from refineseg.inference.tiling import predict_tiled
from refineseg.training import optimizer_step, train, trainer
from refineseg.training.run_state import load_training_state

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = torch.device("cuda")
NO_NATIVE_BF16 = torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False)
needs_bf16 = pytest.mark.skipif(
    NO_NATIVE_BF16, reason="this GPU has no native bfloat16 (needs compute capability 8.0+)"
)
AMPS = ["fp16", pytest.param("bf16", marks=needs_bf16)]

# A tiny, stable run on the GPU: LW-RefineNet-MobileNetV2 on 64-pixel synthetic images.
TINY = [*TINY_TRAIN, "--device", "cuda"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def tiny_model() -> refineseg.SegmentationModel:
    torch.manual_seed(0)
    return refineseg.create_model("lw_refinenet_mbv2", num_classes=len(SYNTHETIC_CLASSES), dropout=0.0)


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls (TF32 alone differs by ~1e-3), restored afterwards."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


# --- Training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", AMPS)
def test_mixed_precision_optimizer_steps_change_the_weights(amp):
    model = tiny_model().to(DEVICE).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = synthetic_batch(4)
    step_losses = [optimizer_step(model, iter([batch]), optimizer, None, scaler, step=s, amp=amp) for s in (1, 2, 3)]

    assert all(math.isfinite(loss) and loss > 0 for loss in step_losses), step_losses
    assert scaler.is_enabled() == (amp == "fp16")
    if amp == "fp16":  # the scaler ran: a positive finite scale (halved once per overflowing step)
        assert 0 < scaler.get_scale() <= 2.0**16
    moved = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "head.conv.weight" in moved and len(moved) > len(before) // 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("amp", AMPS)
def test_cli_trains_with_mixed_precision_on_cuda(tmp_path, amp, run_cli):
    out = tmp_path / amp
    run_cli("train", *TINY, "--iters", "3", "--amp", amp, "--ckpt-interval", "3", "--out", str(out))
    assert len(losses(out)) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses(out))
    state = load_training_state(out / "last")
    assert state["step"] == 3
    assert ("scale" in state["scaler"]) == (amp == "fp16")  # a GradScaler state only when it was enabled
    weights = load_file(str(out / "last" / "model.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_channels_last_training_step_matches_contiguous(no_tf32):
    images, masks = synthetic_batch(2)
    results = []
    for channels_last in (False, True):
        model = tiny_model().to(DEVICE).train()
        x = images.to(DEVICE)
        if channels_last:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
            assert model.head.conv.weight.is_contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), masks.to(DEVICE))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.isfinite(loss_b) and torch.isfinite(grads_b).all()
    assert relative_error(loss_b, loss_a) < 1e-4
    assert relative_error(grads_b, grads_a) < 1e-3


@pytest.fixture
def nccl_group():
    """``join()`` starts a one-process NCCL group, as torchrun would (train() leaves it itself)."""

    def join() -> None:
        dist.init_process_group(
            "nccl",
            init_method=f"tcp://127.0.0.1:{free_port()}",
            rank=0,
            world_size=1,
            device_id=torch.device("cuda", 0),
        )

    yield join
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_on_nccl_with_sync_bn_stops_on_a_signal_and_resumes(tmp_path, monkeypatch, nccl_group):
    out = tmp_path / "run"
    config = tiny_train_config(
        iters=4,
        ckpt_interval=100,
        sync_bn=True,
        device="cuda",
        out=str(out),
    )
    step_once = trainer.optimizer_step
    nets = []

    def signal_after_step_2(net, *args, **kwargs):
        nets.append(net)
        loss = step_once(net, *args, **kwargs)
        if kwargs["step"] == 2:
            signal.raise_signal(signal.SIGUSR1)
        return loss

    monkeypatch.setattr(trainer, "optimizer_step", signal_after_step_2)
    nccl_group()
    stopped = train(config)
    assert not dist.is_initialized()  # train() left the group
    assert isinstance(nets[0], DistributedDataParallel) and next(nets[0].parameters()).is_cuda
    assert any(isinstance(m, nn.SyncBatchNorm) for m in nets[0].modules())
    assert stopped.preempted and stopped.step == 2  # the stop flag went through an NCCL all-reduce
    assert load_training_state(out / "last")["step"] == 2

    monkeypatch.undo()
    nccl_group()
    resumed = train(dataclasses.replace(config, resume=True))
    assert not resumed.preempted and resumed.step == 4
    assert load_training_state(out / "last")["step"] == 4
    assert json.loads((out / "best" / "metrics.json").read_text())["mIoU"] >= 0  # validation over NCCL
    assert len(losses(out)) == 4


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="needs 2 GPUs (NCCL with one process is covered in-process above)",
)
def test_torchrun_two_gpus_with_sync_bn(tmp_path, run_cli):
    out = tmp_path / "ddp"
    run_cli(
        "train",
        *TINY,
        "--iters",
        "3",
        "--sync-bn",
        "--ckpt-interval",
        "3",
        "--out",
        str(out),
        launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "refineseg"],
    )
    assert load_training_state(out / "last")["step"] == 3
    assert len(losses(out)) == 3 and all(math.isfinite(loss) for loss in losses(out))


# --- Evaluation and prediction ------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model"
    make_model(class_names=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE).save_pretrained(path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cli_evaluate_on_cuda_writes_metrics(tmp_path, checkpoint, precision, run_cli):
    common = [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "synthetic",
        "--synthetic-val",
        "3",
        "--synthetic-size",
        "64",
        "--no-confusion-png",
    ]
    run_cli(*common, "--device", "cuda", "--precision", precision, "--out", str(tmp_path / "cuda"))
    run_cli(*common, "--device", "cpu", "--out", str(tmp_path / "cpu"))
    cuda = json.loads((tmp_path / "cuda" / "metrics.json").read_text())
    cpu = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    assert cuda["num_images"] == 3 and cuda["config"]["device"] == "cuda" and 0 <= cuda["mIoU"] <= 1
    assert abs(cuda["aAcc"] - cpu["aAcc"]) < (0.01 if precision == "fp32" else 0.05)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 170, 3), dtype=np.uint8)
    img[40:90, 30:120] = (200, 30, 30)  # some structure so classes vary
    return img


def test_tiled_prediction_on_cuda(image):
    model = make_model(warm_batch_norm=True).to(DEVICE)
    whole = segment(model, image)
    one_tile = predict_tiled(model, image, tile=256, overlap=32, progress=False)
    assert one_tile.shape == image.shape[:2] and one_tile.dtype == np.uint8
    assert (one_tile == whole).mean() >= 0.999  # equal up to exact softmax ties
    # Many tiles (the float16 strip buffers live on the GPU) agree with the same tiling on the CPU.
    tiles = predict_tiled(model, image, tile=64, overlap=16, progress=False)
    tiles_cpu = predict_tiled(model.cpu(), image, tile=64, overlap=16, progress=False)
    assert (tiles == tiles_cpu).mean() >= 0.99


# --- Reduced precision, torch.compile, onnxruntime ----------------------------------------------


@pytest.fixture(scope="module")
def trained_model() -> nn.Module:
    return briefly_trained_model(DEVICE)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synthetic_batch(8, split="val")
    return x.to(DEVICE), y.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=needs_bf16)], ids=["fp16", "bf16"])
def test_reduced_precision_inference_agrees_with_float32(trained_model, held_out, dtype):
    x, y = held_out
    with torch.no_grad():
        reference = trained_model(x).argmax(1)
    assert (reference == y)[y != 255].float().mean() > 0.5  # the model learned something
    for fold_bn in (False, True):
        fast = optimize_for_inference(trained_model, dtype=dtype, fold_bn=fold_bn)
        assert fast.device.type == "cuda"
        out = fast(x)
        assert out.dtype == torch.float32 and out.is_cuda
        agreement = (out.argmax(1) == reference).float().mean().item()
        assert agreement >= 0.99, (fold_bn, agreement)


def test_compiled_model_matches_eager_on_cuda(no_tf32):
    pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    model = make_model(warm_batch_norm=True).to(DEVICE)
    plain = optimize_for_inference(model)
    fast = optimize_for_inference(model, compile=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for size in ((64, 64), (64, 96)):  # a static graph, then one with dynamic shapes
            x = torch.randn(1, 3, *size, generator=generator).to(DEVICE)
            reference = model(x)
            assert relative_error(plain(x), reference) < 1e-4
            assert relative_error(fast(x), reference) < 1e-3


def test_onnxruntime_cuda_provider(tmp_path, trained_model, held_out):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from refineseg.inference.export import OnnxSegmenter, export_onnx

    path = export_onnx(trained_model, tmp_path / "model.onnx", height=64, width=64)
    session = OnnxSegmenter(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.providers[0] == "CUDAExecutionProvider"
    x, _ = held_out
    got = session(x)
    with torch.no_grad():
        reference = trained_model(x)
    assert got.device == x.device and got.shape == reference.shape
    assert relative_error(got, reference) < 1e-2  # TF32 convolutions on both sides
    assert (got.argmax(1) == reference.argmax(1)).float().mean() >= 0.99
