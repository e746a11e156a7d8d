"""Training: LR schedule, loss, config precedence, crash-safe resume, DDP equivalence."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from refineseg import from_pretrained
from refineseg.config_utils import add_dataclass_arguments, build_config
from refineseg.errors import RefineSegError
from refineseg.models import build_model
from refineseg.training import TrainConfig, poly_lr_lambda, segmentation_loss
from refineseg.training.run_state import atomic_directory, recover_directory

# A tiny, fast run: LW-RefineNet on MobileNetV2, 64-pixel synthetic images.
TINY = ["--model", "lw_refinenet_mbv2", "--dataset", "synthetic", "--crop", "64", "--lr", "0.002",
        "--synthetic-train", "16", "--synthetic-val", "2", "--synthetic-size", "64", "--workers", "0",
        "--log-interval", "1"]


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "refineseg", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_poly_schedule_with_warmup():
    config = TrainConfig(iters=100, warmup_iters=10, warmup_ratio=0.1, poly_power=0.9)
    f = poly_lr_lambda(config)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert f(10) == pytest.approx(0.9 ** 0.9)
    assert f(100) == 0.0


def test_loss_is_mean_cross_entropy_over_valid_pixels():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, target), expected)


def test_config_precedence_defaults_yaml_flags(tmp_path):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    (tmp_path / "c.yaml").write_text("iters: 77\nlr: 0.5\nfreeze_bn: true\n")
    config = build_config(TrainConfig, parser.parse_args(["--lr", "0.25"]), str(tmp_path / "c.yaml"))
    assert (config.iters, config.lr, config.freeze_bn, config.batch_size) == (77, 0.25, True, 8)
    (tmp_path / "bad.yaml").write_text("iterz: 3\n")
    with pytest.raises(RefineSegError, match="iterz"):
        build_config(TrainConfig, parser.parse_args([]), str(tmp_path / "bad.yaml"))


def test_atomic_directory_survives_an_interrupted_swap(tmp_path):
    target = tmp_path / "last"
    atomic_directory(target, lambda d: (d / "a.txt").write_text("v1"))
    # A crash after renaming last -> .last.old but before the new one moved in:
    os.replace(target, tmp_path / ".last.old")
    (tmp_path / ".last.tmp").mkdir()
    (tmp_path / ".last.tmp" / "a.txt").write_text("half-written")
    recover_directory(target)
    assert (target / "a.txt").read_text() == "v1"
    assert not (tmp_path / ".last.tmp").exists()
    atomic_directory(target, lambda d: (d / "a.txt").write_text("v2"))
    assert (target / "a.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    common = [*TINY, "--iters", "8", "--batch-size", "2", "--seed", "3", "--val-interval", "3",
              "--ckpt-interval", "2"]
    run_cli("train", *common, "--out", str(tmp_path / "straight"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "refineseg", "train", *common, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (killed / "last").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(killed / "last" / "training_state.pt", weights_only=True)["step"]
    assert 2 <= interrupted_at < 8

    run_cli("train", *common, "--out", str(killed), "--resume")
    a, b = weights(tmp_path / "straight" / "last"), weights(killed / "last")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # The log was rewound to the checkpoint, so every step appears once.
    import json
    steps = [r["iter"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 9))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = run_cli("train", *TINY, "--iters", "1", "--batch-size", "2", "--out", str(tmp_path / "none"),
                   "--resume", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "last" in proc.stderr


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    common = [*TINY, "--iters", "3", "--seed", "1", "--freeze-bn", "--dropout", "0", "--val-interval", "0",
              "--ckpt-interval", "3"]
    run_cli("train", *common, "--batch-size", "4", "--out", str(tmp_path / "single"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "refineseg", "train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = weights(tmp_path / "single" / "last"), weights(tmp_path / "ddp" / "last")
    for key in single:
        if single[key].is_floating_point():
            err = (single[key] - ddp[key]).norm() / single[key].norm().clamp(min=1e-12)
            assert err <= 1e-5, f"{key}: relative error {err:.2e}"
    # ...and training really moved the weights away from the (seeded) initialization.
    torch.manual_seed(1)
    initial = build_model(from_pretrained(tmp_path / "single" / "last").config).state_dict()
    assert not torch.allclose(initial["head.conv.weight"], single["head.conv.weight"])


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # Frozen BN and no dropout: two micro-batches of 2 must equal one batch of 4. Scales >= 1 keep
    # every crop pixel valid, so per-micro-batch means average to the big batch's mean.
    common = [*TINY, "--iters", "2", "--seed", "2", "--freeze-bn", "--dropout", "0", "--val-interval", "0",
              "--ckpt-interval", "2", "--scale-min", "1.0", "--scale-max", "1.5"]
    run_cli("train", *common, "--batch-size", "4", "--out", str(tmp_path / "big"))
    run_cli("train", *common, "--batch-size", "2", "--accum-steps", "2", "--out", str(tmp_path / "accum"))
    big, accum = weights(tmp_path / "big" / "last"), weights(tmp_path / "accum" / "last")
    for key in big:
        if big[key].is_floating_point():
            err = (big[key] - accum[key]).norm() / big[key].norm().clamp(min=1e-12)
            assert err <= 1e-5, f"{key}: relative error {err:.2e}"


def test_bf16_mixed_precision_trains(tmp_path):
    run_cli("train", *TINY, "--iters", "2", "--batch-size", "2", "--amp", "bf16", "--val-interval", "0",
            "--out", str(tmp_path / "bf16"))
    import json
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "bf16" / "last").values() if v.is_floating_point())
