"""Fault injection: runs and outputs that never lose work or report success falsely.

Each case failed on the code before these fixes: a reused ``--out`` replaced the earlier run,
two runs shared one directory, mistyped YAML values trained anyway, a full disk gave a
traceback and left a ``.last.tmp``, unknown checkpoint fields gave tracebacks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import make_model, saved_weights
from PIL import Image
from test_predict_batch import photo, temporaries

import refineseg
from refineseg.cli.app import main as cli_main
from refineseg.data import write_image
from refineseg.errors import WriteError
from refineseg.training import run_state
from refineseg.training.run_dir import LOCK_NAME, RunLock
from refineseg.utils import files

TINY = [
    "--model",
    "lw_refinenet_mbv2",
    "--dataset",
    "synthetic",
    "--crop",
    "64",
    "--synthetic-train",
    "8",
    "--synthetic-val",
    "2",
    "--synthetic-size",
    "64",
    "--workers",
    "0",
    "--batch-size",
    "2",
    "--val-interval",
    "0",
]


def train(out: Path, *extra: str) -> int:
    return cli_main(["train", *TINY, "--out", str(out), *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-step run (checkpoints, metrics, config) to copy into each test."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(out, "--iters", "2") == 0
    return out


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# --- 1. a run directory belongs to one run --------------------------------------------------------


def test_reusing_out_without_resume_is_refused_and_the_run_kept(finished_run, tmp_path, capsys, one_thread):
    out = copy_run(finished_run, tmp_path)
    before = tree_bytes(out)
    assert train(out, "--iters", "1", "--model", "lw_refinenet18") == 2
    err = one_error_line(capsys)
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert tree_bytes(out) == before  # not a byte changed, no lock left behind
    assert not (out / LOCK_NAME).exists()


def test_overwrite_moves_the_old_run_aside_untouched(finished_run, tmp_path, one_thread):
    out = copy_run(finished_run, tmp_path)
    before = tree_bytes(out)
    assert train(out, "--iters", "1", "--overwrite") == 0
    archives = list(tmp_path.glob("run.archived-*"))
    assert len(archives) == 1 and tree_bytes(archives[0]) == before
    state = torch.load(out / "last" / run_state.STATE_NAME, weights_only=True)
    assert state["step"] == 1 and state["config"]["iters"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1]  # only this run's history


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert train(tmp_path / "run", "--iters", "1", "--resume", "--overwrite") == 2
    assert "exclude each other" in one_error_line(capsys)


def test_a_second_concurrent_run_is_refused_naming_the_holder(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    with RunLock(out):  # held as by another live run (flock: another open file description)
        assert train(out, "--iters", "1") == 2
        err = one_error_line(capsys)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "in use by another run" in err
    assert not (out / LOCK_NAME).exists()
    assert train(out, "--iters", "1") == 0  # released: the directory is free again


def test_a_lock_held_by_another_process_refuses_too(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from refineseg.training.run_dir import RunLock
        RunLock({str(out)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train(out, "--iters", "1") == 2
        assert f"pid {holder.pid}" in one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock file is stale and taken over with a note.
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    lock = RunLock(out)
    with pytest.MonkeyPatch.context() as mp:
        notes = []
        mp.setattr("refineseg.training.run_dir.log.info", lambda msg, *a: notes.append(msg % a))
        lock.acquire()
    lock.release()
    assert any(f"pid {holder.pid}" in n and "took over" in n for n in notes)


def test_resume_auto_without_checkpoint_archives_leftovers(tmp_path, one_thread):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iter": 7, "loss": 1.0}\n')  # a run that died before any checkpoint
    assert train(out, "--iters", "1", "--resume", "auto") == 0
    archived = list(tmp_path.glob("run.archived-*"))
    assert len(archived) == 1 and (archived[0] / "metrics.jsonl").read_text().startswith('{"iter": 7')
    assert '"iter": 7' not in (out / "metrics.jsonl").read_text()


# --- 2. typed configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, words",
    [
        ("iters: 10.7", ["iters", "expected an integer", "10.7"]),
        ("iters: many", ["iters", "expected an integer", "'many'"]),
        ("lr: fast", ["lr", "expected a number", "'fast'"]),
        ('freeze_bn: "no"', ["freeze_bn", "expected true or false", "'no'"]),
        ("optimizer: sgdd", ["optimizer", "one of sgd, adam, adamw"]),
        ("iters: 0", ["iters", ">= 1"]),
        ("lr: -0.1", ["lr", ">= 0"]),
        ("loss: ce+dyce", ["dyce"]),
    ],
)
def test_yaml_values_are_type_checked(tmp_path, capsys, line, words):
    config = tmp_path / "c.yaml"
    config.write_text(line + "\n")
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = one_error_line(capsys)
    assert all(w in err for w in words), err
    if "dyce" not in line:
        assert str(config) in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_yaml_booleans_and_numbers_as_yaml_writes_them(tmp_path):
    from refineseg.training import TrainConfig
    from refineseg.utils.config import config_from_values

    config = config_from_values(TrainConfig, {"freeze_bn": False, "lr": "1e-3", "iters": 5}, "test")
    assert config.freeze_bn is False and config.lr == 0.001 and config.iters == 5


def test_flag_values_are_checked_with_the_flag_named(tmp_path, capsys):
    assert cli_main(["predict", "x.png", "--checkpoint", "ckpt", "--tile", "64", "--overlap", "64"]) == 2
    assert "overlap" in one_error_line(capsys)
    with pytest.raises(SystemExit):  # argparse's own one-line usage error
        cli_main(["train", "--iters", "many"])
    assert "--iters: invalid int value: 'many'" in capsys.readouterr().err


# --- 3. full disk -----------------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_bytes_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    monkeypatch.setattr(files.os, "fsync", enospc)
    with pytest.raises(WriteError) as info:
        files.write_bytes(path, b"x" * 3_000_000)
    message = str(info.value)
    assert message.startswith(f"{path}: no space left on device (needs 3.0 MB, ") and "free)" in message
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_previous(
    finished_run, tmp_path, capsys, monkeypatch, one_thread
):
    out = copy_run(finished_run, tmp_path)
    before = tree_bytes(out / "last")

    def full_disk(state, path):  # a partial file, then the disk is full
        Path(path).write_bytes(b"partial")
        enospc()

    monkeypatch.setattr(run_state, "save_state", full_disk)
    monkeypatch.setattr("refineseg.training.trainer.save_state", full_disk)
    assert train(out, "--iters", "3", "--resume") == 2
    err = one_error_line(capsys)
    assert f"{out / 'last'}: no space left on device (needs " in err and "the previous checkpoint is kept" in err
    assert not (out / ".last.tmp").exists() and tree_bytes(out / "last") == before
    monkeypatch.undo()
    assert train(out, "--iters", "3", "--resume") == 0  # space back: the run continues from step 2
    assert torch.load(out / "last" / run_state.STATE_NAME, weights_only=True)["step"] == 3


def _tmpfs_runner() -> list[str] | None:
    """A command prefix giving a private mount namespace where tmpfs can be mounted, or None."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    prefixes = [["unshare", "--mount"]] if os.geteuid() == 0 else []
    prefixes.append(["unshare", "--user", "--map-root-user", "--mount"])
    for prefix in prefixes:
        probe = subprocess.run(
            [*prefix, "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"], capture_output=True
        )
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_a_real_full_tmpfs_during_a_checkpoint(tmp_path):
    runner = _tmpfs_runner()
    if runner is None:
        pytest.skip("cannot mount a tmpfs here (needs root or unprivileged user namespaces with `unshare`)")
    disk = tmp_path / "disk"
    disk.mkdir()
    refineseg_cmd = f"{sys.executable} -m refineseg train {' '.join(TINY)} --out {disk}/run --ckpt-interval 1"
    # lw_refinenet_mbv2: last/ ~26 MB (weights + momentum), best/ ~13 MB. In 48 MB, step 1's last/ fits,
    # step 2 writes best/ and then has no room for the new last/ next to the old one.
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=48m tmpfs {disk} || exit 99
        {refineseg_cmd} --iters 2 2> {tmp_path}/err1.txt; echo $? > {tmp_path}/rc1.txt
        ls -a {disk}/run > {tmp_path}/ls1.txt
        cp {disk}/run/last/training_state.pt {tmp_path}/state1.pt
        mount -o remount,size=200m {disk}
        {refineseg_cmd} --iters 2 --resume 2> {tmp_path}/err2.txt; echo $? > {tmp_path}/rc2.txt
        cp {disk}/run/last/training_state.pt {tmp_path}/state2.pt
    """)
    env = {**os.environ, "REFINESEG_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*runner, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    err1 = (tmp_path / "err1.txt").read_text().strip().splitlines()
    assert (tmp_path / "rc1.txt").read_text().strip() == "2", err1
    assert len(err1) == 1 and err1[0].startswith(f"error: {disk}/run/last: no space left on device"), err1
    assert "the previous checkpoint is kept" in err1[0]
    assert ".last.tmp" not in (tmp_path / "ls1.txt").read_text().split()
    assert torch.load(tmp_path / "state1.pt", weights_only=True)["step"] == 1
    assert (tmp_path / "rc2.txt").read_text().strip() == "0", (tmp_path / "err2.txt").read_text()
    assert torch.load(tmp_path / "state2.pt", weights_only=True)["step"] == 2


# --- 4. batch prediction (the other cases: tests/inference/test_predict_batch.py) -------------------


@pytest.fixture(scope="module")
def predict_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best"
    make_model().save_pretrained(path)
    return path


@pytest.mark.slow
def test_kill_9_then_skip_existing_gives_the_outputs_of_an_uninterrupted_run(predict_checkpoint, tmp_path):
    for k in range(8):
        write_image(tmp_path / "in" / f"img{k}.png", photo(k, 160, 200))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "refineseg",
            "predict",
            "--checkpoint",
            str(predict_checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
            str(tmp_path / "in"),
        ]

    subprocess.run(command(tmp_path / "reference"), env=env, check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (
        not (out.is_dir() and any(out.glob("img*_overlay.png"))) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in out.glob("*.png") if not p.name.startswith("."))
    assert len(finished) < 16, "the run ended before it could be killed"
    for name in finished:  # whatever is there is complete
        with Image.open(out / name) as img:
            img.load()
    (out / f".img5.png{files.TMP_MARK}{proc.pid}.png").write_bytes(b"\x89PNG cut")  # as a kill can leave it

    result = subprocess.run(command(out, "--skip-existing"), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout.strip().splitlines()[-1]
    assert temporaries(out) == []
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference").iterdir()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


# --- 5. one-line errors, usual permissions ----------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    directory = tmp_path / "ckpt"
    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(directory)
    return directory


def _edit_config(checkpoint: Path, **changes) -> None:
    path = checkpoint / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_unknown_model_in_a_checkpoint_is_one_line(checkpoint, tmp_path, capsys):
    _edit_config(checkpoint, name="lw_refinenet_9000")
    assert cli_main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "synthetic"]) == 2
    err = one_error_line(capsys)
    assert f"{checkpoint / 'config.json'}" in err and "unknown model 'lw_refinenet_9000'" in err


def test_checkpoint_from_a_newer_version_names_fields_and_version(checkpoint, capsys):
    _edit_config(checkpoint, refineseg_version="9.0.0", attention_heads=8)
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--out", str(checkpoint / "m.onnx")]) == 2
    err = one_error_line(capsys)
    assert "attention_heads" in err and "refineseg 9.0.0" in err and "upgrade refineseg" in err


def test_saved_files_have_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        directory = tmp_path / "ckpt"
        refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(directory)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}
    assert saved_weights(directory)  # and the file reads back
