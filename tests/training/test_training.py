"""Training: LR schedule, loss, config precedence, the loop's parts, crash-safe resume, DDP equivalence."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from helpers import saved_weights as weights
from helpers import synthetic_batch

import refineseg
from refineseg import from_pretrained
from refineseg.cli.app import main as cli_main
from refineseg.data import SyntheticSegmentation, eval_transform
from refineseg.errors import RefineSegError
from refineseg.models import build_model
from refineseg.training import (
    TrainConfig,
    build_optimizer,
    optimizer_step,
    poly_lr_lambda,
    save_last,
    trainer,
    validate_and_save_best,
)
from refineseg.training.losses import build_loss
from refineseg.training.progress import MetricsLog
from refineseg.training.run_state import (
    atomic_directory,
    capture_rng_state,
    load_training_state,
    recover_directory,
)
from refineseg.utils.config import add_dataclass_arguments, build_config

# A tiny, fast run: LW-RefineNet on MobileNetV2, 64-pixel synthetic images.
TINY = [
    "--model",
    "lw_refinenet_mbv2",
    "--dataset",
    "synthetic",
    "--crop",
    "64",
    "--lr",
    "0.002",
    "--synthetic-train",
    "16",
    "--synthetic-val",
    "2",
    "--synthetic-size",
    "64",
    "--workers",
    "0",
    "--log-interval",
    "1",
]


def test_poly_schedule_with_warmup():
    config = TrainConfig(iters=100, warmup_iters=10, warmup_ratio=0.1, poly_power=0.9)
    f = poly_lr_lambda(config)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert f(10) == pytest.approx(0.9**0.9)
    assert f(100) == 0.0


def test_loss_is_mean_cross_entropy_over_valid_pixels():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(build_loss("ce", num_classes=4)(logits, target), expected)


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
def test_resume_after_kill_is_bit_identical(tmp_path, run_cli):
    common = [*TINY, "--iters", "8", "--batch-size", "2", "--seed", "3", "--val-interval", "3", "--ckpt-interval", "2"]
    run_cli("train", *common, "--out", str(tmp_path / "straight"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "refineseg", "train", *common, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
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


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, run_cli):
    proc = run_cli(
        "train", *TINY, "--iters", "1", "--batch-size", "2", "--out", str(tmp_path / "none"), "--resume", check=False
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "last" in proc.stderr


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, run_cli):
    # fp32 (--amp none): bf16, the default on CPUs with native bf16, sums gradients of other batch
    # splits with ~1e-3 rounding; its training is tested in test_convergence.py. Channels-last stays on.
    common = [
        *TINY,
        "--iters",
        "3",
        "--seed",
        "1",
        "--freeze-bn",
        "--dropout",
        "0",
        "--val-interval",
        "0",
        "--ckpt-interval",
        "3",
        "--amp",
        "none",
    ]
    run_cli("train", *common, "--batch-size", "4", "--out", str(tmp_path / "single"))
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "refineseg"]
    run_cli("train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp"), launcher=torchrun)
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
def test_gradient_accumulation_matches_one_big_batch(tmp_path, run_cli):
    # Frozen BN and no dropout: two micro-batches of 2 must equal one batch of 4. Scales >= 1 keep
    # every crop pixel valid, so per-micro-batch means average to the big batch's mean.
    common = [
        *TINY,
        "--iters",
        "2",
        "--seed",
        "2",
        "--freeze-bn",
        "--dropout",
        "0",
        "--val-interval",
        "0",
        "--ckpt-interval",
        "2",
        "--scale-min",
        "1.0",
        "--scale-max",
        "1.5",
        "--amp",
        "none",
    ]  # fp32: see above
    run_cli("train", *common, "--batch-size", "4", "--out", str(tmp_path / "big"))
    run_cli("train", *common, "--batch-size", "2", "--accum-steps", "2", "--out", str(tmp_path / "accum"))
    big, accum = weights(tmp_path / "big" / "last"), weights(tmp_path / "accum" / "last")
    for key in big:
        if big[key].is_floating_point():
            err = (big[key] - accum[key]).norm() / big[key].norm().clamp(min=1e-12)
            assert err <= 1e-5, f"{key}: relative error {err:.2e}"


def test_bf16_mixed_precision_trains(tmp_path, run_cli):
    run_cli(
        "train",
        *TINY,
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--amp",
        "bf16",
        "--val-interval",
        "0",
        "--out",
        str(tmp_path / "bf16"),
    )
    import json

    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "bf16" / "last").values() if v.is_floating_point())


# --- The training loop's parts, one at a time -------------------------------------------------


def tiny_model() -> refineseg.SegmentationModel:
    """LW-RefineNet-MobileNetV2 for the 6 synthetic classes, without dropout."""
    torch.manual_seed(0)
    return refineseg.create_model("lw_refinenet_mbv2", num_classes=6, dropout=0.0)


def sgd_step_parts(model: torch.nn.Module):
    """The optimizer, poly scheduler and (disabled) grad scaler that training builds for ``model``."""
    config = TrainConfig(iters=10, lr=0.01)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(config))
    return optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def test_optimizer_step_with_accumulation_equals_one_step_on_the_whole_batch():
    # Eval-mode BN (running statistics) and no dropout: the forward pass does not depend on
    # how the batch is split, so two micro-batches of 2 must update like one batch of 4.
    images, masks = synthetic_batch(4)
    big, accum = tiny_model().eval(), tiny_model().eval()
    big_parts, accum_parts = sgd_step_parts(big), sgd_step_parts(accum)
    before = copy.deepcopy(big.state_dict())

    big_loss = optimizer_step(big, iter([(images, masks)]), *big_parts, step=1)
    micro = iter([(images[:2], masks[:2]), (images[2:], masks[2:]), "never read"])
    accum_loss = optimizer_step(accum, micro, *accum_parts, step=1, accum_steps=2)

    assert next(micro) == "never read"  # exactly accum_steps micro-batches consumed
    assert math.isfinite(big_loss) and big_loss > 0
    assert accum_loss == pytest.approx(big_loss, rel=1e-5)
    assert big_parts[0].param_groups[0]["lr"] == accum_parts[0].param_groups[0]["lr"] < 0.01  # scheduler stepped
    moved = 0
    for (name, a), b in zip(big.state_dict().items(), accum.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
            moved += not torch.equal(a, before[name])
    assert moved > 0, "the step did not change any weight"


def test_optimizer_step_names_the_step_when_the_loss_is_not_finite():
    images, masks = synthetic_batch(2)
    images[0, :, :4, :4] = float("nan")
    model = tiny_model().eval()
    with pytest.raises(RefineSegError, match=r"loss became nan at step 7\b"):
        optimizer_step(model, iter([(images, masks)]), *sgd_step_parts(model), step=7)


def test_save_last_writes_a_loadable_checkpoint_with_the_training_state(tmp_path):
    model = tiny_model()
    optimizer, scheduler, scaler = sgd_step_parts(model)
    optimizer_step(model, iter([synthetic_batch(2)]), optimizer, scheduler, scaler, step=1)
    rng = capture_rng_state()
    config = TrainConfig(model="lw_refinenet_mbv2", iters=10, out=str(tmp_path))

    last = save_last(
        tmp_path, model, optimizer, scheduler, scaler, step=3, best_miou=0.25, rng_state=rng, config=config
    )

    assert last == tmp_path / "last"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary directories left over
    loaded = refineseg.from_pretrained(last).state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    state = load_training_state(last)
    assert (state["step"], state["best_miou"], state["config"]["iters"]) == (3, 0.25, 10)
    assert torch.equal(state["rng"]["torch"], rng["torch"])
    assert state["scheduler"]["last_epoch"] == 1 and state["optimizer"]["state"]  # momentum buffers saved


def test_validate_and_save_best_writes_best_only_when_miou_improves(tmp_path, monkeypatch):
    model = tiny_model().train()
    val_set = SyntheticSegmentation("val", 2, 64, transform=eval_transform())
    metrics = MetricsLog(tmp_path, None, enabled=True)
    best_dir = tmp_path / "best"

    # A real evaluation: the first score always beats the initial -1.
    best = validate_and_save_best(model, val_set, tmp_path, metrics, step=2, best_miou=-1.0)
    assert 0.0 <= best <= 1.0 and model.training  # train mode restored
    assert json.loads((best_dir / "metrics.json").read_text())["mIoU"] == best
    first = weights(best_dir)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())

    with torch.no_grad():  # new weights, scored worse, then better
        model.head.conv.weight.mul_(2.0)
    scores = iter([best - 0.1, best + 0.1])

    def fake_evaluate(*args, **kwargs):
        score = next(scores)
        return {"mIoU": score, "aAcc": 0.5, "mAcc": 0.5}, None

    monkeypatch.setattr(trainer, "evaluate_model", fake_evaluate)
    assert validate_and_save_best(model, val_set, tmp_path, metrics, step=4, best_miou=best) == best
    assert all(torch.equal(first[k], v) for k, v in weights(best_dir).items())  # best/ untouched
    assert validate_and_save_best(model, val_set, tmp_path, metrics, step=6, best_miou=best) == best + 0.1
    assert torch.equal(weights(best_dir)["head.conv.weight"], model.head.conv.weight)
    assert json.loads((best_dir / "metrics.json").read_text())["mIoU"] == best + 0.1

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["mIoU"]) for r in records] == [(2, best), (4, best - 0.1), (6, best + 0.1)]
    assert (tmp_path / "plots" / "miou.png").is_file()
    metrics.close()


# --- --resume auto ----------------------------------------------------------------------------


def test_resume_accepts_true_false_and_auto_from_flags_and_yaml(tmp_path):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    for flags, expected in [
        ([], False),
        (["--resume"], True),
        (["--resume", "auto"], "auto"),
        (["--resume", "false"], False),
        (["--resume", "auto", "--no-resume"], False),
        (["--resume", "--iters", "3"], True),
    ]:
        assert build_config(TrainConfig, parser.parse_args(flags)).resume == expected, flags
    for text, expected in [("true", True), ("false", False), ("auto", "auto")]:
        (tmp_path / "c.yaml").write_text(f"resume: {text}\n")
        assert build_config(TrainConfig, parser.parse_args([]), str(tmp_path / "c.yaml")).resume == expected
    with pytest.raises(ValueError, match="resume must be true, false or auto, got 'sometimes'"):
        TrainConfig(resume="sometimes")


@pytest.mark.parametrize("how", ["flag", "yaml"])
def test_bad_resume_value_is_a_one_line_cli_error(tmp_path, capsys, how):
    if how == "flag":
        args = ["--resume", "later"]
    else:
        (tmp_path / "c.yaml").write_text("resume: later\n")
        args = ["--config", str(tmp_path / "c.yaml")]
    assert cli_main(["train", *TINY, "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "resume: expected true or false or 'auto', got 'later'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_auto_starts_fresh_then_continues_from_the_saved_step(tmp_path, run_cli):
    out = tmp_path / "run"
    common = [
        *TINY,
        "--batch-size",
        "2",
        "--val-interval",
        "0",
        "--ckpt-interval",
        "1",
        "--out",
        str(out),
        "--resume",
        "auto",
    ]
    first = run_cli("train", *common, "--iters", "2")
    assert f"no checkpoint in {out / 'last'}: starting a new run" in first.stdout
    assert torch.load(out / "last" / "training_state.pt", weights_only=True)["step"] == 2

    second = run_cli("train", *common, "--iters", "4")
    assert f"resuming from {out / 'last'} at step 2" in second.stdout
    assert "step 3/4" in second.stdout and "step 1/4" not in second.stdout
    assert torch.load(out / "last" / "training_state.pt", weights_only=True)["step"] == 4
    steps = [r["iter"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_init_from_copies_a_checkpoint_and_reinitializes_a_classifier_of_other_classes(tmp_path):
    from refineseg.errors import CheckpointError
    from refineseg.training.setup import init_from_checkpoint

    torch.manual_seed(1)
    source = refineseg.create_model("lw_refinenet_mbv2", num_classes=6)
    source.save_pretrained(tmp_path / "stage1")
    same = refineseg.create_model("lw_refinenet_mbv2", num_classes=6)
    init_from_checkpoint(same, tmp_path / "stage1")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())

    other = refineseg.create_model("lw_refinenet_mbv2", num_classes=3)
    fresh_head = {k: v.clone() for k, v in other.state_dict().items() if k.startswith("head.")}
    init_from_checkpoint(other, tmp_path / "stage1")
    for key, value in other.state_dict().items():
        assert torch.equal(value, fresh_head[key] if key in fresh_head else source.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="holds lw_refinenet_mbv2, but this run trains lw_refinenet18"):
        init_from_checkpoint(refineseg.create_model("lw_refinenet18", num_classes=6), tmp_path / "stage1")


# --- --resume reads OUT/config.yaml; nothing is written into OUT before every check passed -------------


def tree_bytes(directory) -> dict[str, bytes | None]:
    """Everything under ``directory``: path -> bytes, None for a folder ("left exactly as it was" compares these)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in sorted(directory.rglob("*"))
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, one_thread):
    """``(straight, stopped)``: a 4-step run, and the same run stopped by SIGTERM after step 2 (exit 75)."""
    root = tmp_path_factory.mktemp("resume")
    common = [
        *TINY,
        "--batch-size",
        "2",
        "--iters",
        "4",
        "--seed",
        "4",
        "--val-interval",
        "0",
        "--ckpt-interval",
        "100",
    ]
    assert cli_main(["train", *common, "--out", str(root / "straight")]) == 0
    step_once = trainer.optimizer_step

    def sigterm_in_step_2(*args, **kwargs):
        loss = step_once(*args, **kwargs)
        if kwargs["step"] == 2:
            signal.raise_signal(signal.SIGTERM)
        return loss

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "optimizer_step", sigterm_in_step_2)
        assert cli_main(["train", *common, "--out", str(root / "stopped")]) == 75
    return root / "straight", root / "stopped"


def test_resume_with_no_other_flag_continues_with_the_runs_options(stopped_run, tmp_path, capsys):
    straight, stopped = stopped_run
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    assert cli_main(["train", "--out", str(out), "--resume"]) == 0  # model, crop, batch, iters... from config.yaml
    assert load_training_state(out / "last")["step"] == 4
    a, b = weights(straight / "last"), weights(out / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "config_changes.yaml").exists()


def test_resume_with_a_changed_crop_is_refused_in_one_line_and_out_is_untouched(stopped_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[1], out)
    before = tree_bytes(out)
    assert cli_main(["train", "--out", str(out), "--resume", "--crop", "96", "--iters", "6"]) == 2
    err = one_error_line(capsys)
    assert f"--crop 96 differs from the run's 64 ({out / 'config.yaml'}); pass --override to change it" in err
    assert tree_bytes(out) == before
    # Fixed by the checkpoint: refused even with --override.
    assert cli_main(["train", "--out", str(out), "--resume", "--override", "--model", "lw_refinenet18"]) == 2
    assert "--model lw_refinenet18 differs from the run's lw_refinenet_mbv2" in one_error_line(capsys)
    # A resume that passes the option check but fails later (no such data) writes nothing either.
    assert (
        cli_main(
            [
                "train",
                "--out",
                str(out),
                "--resume",
                "--override",
                "--dataset",
                "folder",
                "--data-root",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert str(tmp_path / "missing") in one_error_line(capsys)
    assert tree_bytes(out) == before


def test_resume_with_override_applies_and_records_the_change(stopped_run, tmp_path, caplog):
    import yaml

    out = tmp_path / "run"
    shutil.copytree(stopped_run[1], out)
    caplog.set_level(logging.INFO, logger="refineseg.train")
    assert (
        cli_main(
            ["train", "--out", str(out), "--resume", "--crop", "96", "--lr", "0.004", "--iters", "5", "--override"]
        )
        == 0
    )
    logged = caplog.text
    assert "with --crop 96 instead of the run's 64 (--override)" in logged
    assert "with --iters 5 instead of the run's 4 (the poly schedule is stretched to end at step 5)" in logged
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["crop"], saved["lr"], saved["iters"], saved["model"]) == (96, 0.004, 5, "lw_refinenet_mbv2")
    [entry] = yaml.safe_load((out / "config_changes.yaml").read_text())
    assert entry["step"] == 2 and entry["override"] is True
    assert entry["changes"] == {
        "iters": {"from": 4, "to": 5},
        "crop": {"from": 64, "to": 96},
        "lr": {"from": 0.002, "to": 0.004},
    }
    records = {r["iter"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert records[3]["lr"] == pytest.approx(0.004 * (1 - 3 / 5) ** 0.9)  # the new LR, on the stretched schedule
    assert load_training_state(out / "last")["step"] == 5


def test_a_failed_start_leaves_out_as_it_was_and_the_corrected_command_runs(stopped_run, tmp_path, capsys, one_thread):
    out = tmp_path / "new"
    common = [*TINY, "--batch-size", "2", "--iters", "1", "--val-interval", "0"]
    for bad in (
        ["--crop", "16"],
        ["--backbone-weights", str(tmp_path / "missing.pth")],
        ["--dataset", "folder", "--data-root", str(tmp_path / "no_data")],
    ):
        assert cli_main(["train", *common, *bad, "--out", str(out)]) == 2, bad
        one_error_line(capsys)
        assert not out.exists(), bad
    # --overwrite archives the old run only once the new one has started.
    old = tmp_path / "old"
    shutil.copytree(stopped_run[1], old)
    before = tree_bytes(old)
    assert (
        cli_main(
            ["train", *common, "--backbone-weights", str(tmp_path / "missing.pth"), "--out", str(old), "--overwrite"]
        )
        == 2
    )
    one_error_line(capsys)
    assert tree_bytes(old) == before and not list(tmp_path.glob("old.archived-*"))
    assert cli_main(["train", *common, "--out", str(out)]) == 0
    assert cli_main(["train", *common, "--out", str(old), "--overwrite"]) == 0
    assert len(list(tmp_path.glob("old.archived-*"))) == 1
