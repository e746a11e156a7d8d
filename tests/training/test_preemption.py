"""Preemption: SIGTERM/SIGINT/SIGUSR1 stop training after the current step, with ``last/`` saved
and exit status 75; resuming then reproduces the uninterrupted run bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, tiny_train_config
from helpers import saved_weights as weights

from refineseg.training import TrainConfig, train, trainer
from refineseg.training.run_state import PREEMPTED_EXIT_CODE, STOP_SIGNALS, StopSignals, load_training_state
from refineseg.utils import distributed as dist_utils

# `refineseg train` as a script file (torchrun launches scripts): the real CLI, its exit status included.
WRAPPER = """
import sys
from refineseg.cli.app import main
sys.exit(main(["train", *sys.argv[1:]]))
"""

# A tiny, stable run: LW-RefineNet-MobileNetV2 on 64-pixel synthetic images, a log line per step,
# validation only at the end, no periodic checkpoint (so `last/` can only come from the stop).
TINY = [*TINY_TRAIN, "--ckpt-interval", "1000", "--seed", "5"]
TINY_DEFAULT_WORKERS = TINY[: TINY.index("--workers")] + TINY[TINY.index("--workers") + 2 :]  # 2 workers
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def default_signals() -> None:
    """Child ``preexec_fn``: a shell may start the tests with SIGINT ignored; the child must not inherit that."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} and {b} differ"


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the timing field."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "it/s"} for line in lines]


@pytest.fixture(scope="module")
def train_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "train.py"
    path.write_text(WRAPPER)
    return path


def run_train(script: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def preempt(
    cmd: list[str],
    sig: signal.Signals,
    rng: random.Random,
    after: str = "step 2/",
    target: Callable[[subprocess.Popen], int] | None = None,
    group: bool = False,
) -> tuple[int, str]:
    """Start ``cmd``; once a stdout line starts with ``after``, wait a random moment and send ``sig``.

    The signal goes to the process ``target(proc)`` names, else to the started one, or with
    ``group`` to its whole process group (as Ctrl-C does). Returns the exit status and the output.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        preexec_fn=default_signals,
        start_new_session=group,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(after):
                break
        assert proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(rng.uniform(0.0, 0.5))
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(target(proc) if target else proc.pid, sig)
        rest, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + rest


def stopped_step(output: str, reason: str, iters: int) -> int:
    match = re.search(rf"stopped by {reason} after step (\d+)/{iters}; checkpoint in .*--resume", output)
    assert match, output[-3000:]
    return int(match[1])


# --- StopSignals and the stop agreement -------------------------------------------------------


@pytest.fixture
def saved_handlers():
    """Put back the stop signals' handlers after the test; SIGINT starts as KeyboardInterrupt."""
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for name, handler in handlers.items():
        signal.signal(getattr(signal, name), handler)


def test_first_signal_is_recorded_and_the_second_acts_as_before(saved_handlers):
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    signal.signal(signal.SIGUSR1, previous)
    with StopSignals() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1 and calls == []
        signal.raise_signal(signal.SIGUSR1)  # the previous handlers are back already
        assert calls == [signal.SIGUSR1] and stop.received == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):  # a double Ctrl-C still interrupts
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handlers_are_restored_when_no_signal_came(saved_handlers):
    before = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}
    with StopSignals() as stop:
        assert all(signal.getsignal(getattr(signal, name)) == stop._on_signal for name in STOP_SIGNALS)
    assert {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS} == before


def test_ignored_signals_stay_ignored_and_other_threads_change_nothing(saved_handlers):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with StopSignals():
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    before = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}
    seen = []

    def in_thread():
        with StopSignals() as stop:
            seen.append(({name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}, stop.requested))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [(before, False)]


def _agree_on_rank(rank: int, out: str) -> None:
    votes = [dist_utils.any_process(rank == 1), dist_utils.any_process(False), dist_utils.any_process(rank == 0)]
    Path(out, f"{rank}.json").write_text(json.dumps(votes))


def test_any_process_is_true_everywhere_when_one_process_says_so(tmp_path, gloo_group):
    assert dist_utils.any_process(True) and not dist_utils.any_process(False)  # one process: no communication
    gloo_group(_agree_on_rank, 2, str(tmp_path))
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [True, False, True]


# --- train() stopped at a known step -----------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_stop_at_a_validation_step_then_resume_gives_the_same_log_and_checkpoints(tmp_path, monkeypatch):
    # Stop after step 4: validation is due there (skipped, then run first on resume) and the log
    # window (every 3 steps) is half full, so the step-6 record must still average steps 4-6.
    # The default training path (channels-last, --amp auto: bf16 on CPUs with native bf16).
    config = tiny_train_config(
        iters=6,
        seed=2,
        val_interval=4,
        ckpt_interval=100,
        log_interval=3,
        out=str(tmp_path / "straight"),
    )
    straight = train(config)
    assert (straight.preempted, straight.exit_code, straight.step) == (False, 0, 6)

    step_once = trainer.optimizer_step

    def signal_during_step_4(*args, **kwargs):
        loss = step_once(*args, **kwargs)
        if kwargs["step"] == 4:
            signal.raise_signal(signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer, "optimizer_step", signal_during_step_4)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "stopped"
    stopped = train(dataclasses.replace(config, out=str(out)))
    assert signal.getsignal(signal.SIGTERM) is handler
    assert (stopped.preempted, stopped.exit_code, stopped.step) == (True, PREEMPTED_EXIT_CODE, 4)
    state = load_training_state(out / "last")
    assert state["step"] == 4 and state["validate_pending"] and state["log_window"]["steps"] == 1
    assert not (out / "best").exists()
    assert [r["iter"] for r in records(out)] == [3]

    monkeypatch.undo()
    resumed = train(dataclasses.replace(config, out=str(out), resume=True))
    assert (resumed.preempted, resumed.step) == (False, 6)
    assert records(out) == records(tmp_path / "straight")
    assert_same_weights(out / "last", tmp_path / "straight" / "last")
    assert_same_weights(out / "best", tmp_path / "straight" / "best")
    momentum = [load_training_state(d / "last")["optimizer"]["state"] for d in (out, tmp_path / "straight")]
    assert momentum[0].keys() == momentum[1].keys() and momentum[0]
    assert all(torch.equal(momentum[0][i]["momentum_buffer"], momentum[1][i]["momentum_buffer"]) for i in momentum[0])


# --- refineseg train, signalled from outside ---------------------------------------------------


@pytest.mark.slow
def test_sigterm_at_a_random_moment_then_resume_is_bit_identical(tmp_path, train_script):
    iters = 40
    rng = random.Random(1234)
    out = tmp_path / "preempted"
    cmd = [sys.executable, str(train_script), *TINY, "--iters", str(iters), "--out", str(out)]
    status, output = preempt(cmd, signal.SIGTERM, rng)
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    step = stopped_step(output, "SIGTERM", iters)
    assert 2 <= step < iters
    assert load_training_state(out / "last")["step"] == step
    assert [r["iter"] for r in records(out)] == list(range(1, step + 1))
    assert "Traceback" not in output

    run_train(train_script, *TINY, "--iters", str(iters), "--out", str(out), "--resume")
    run_train(train_script, *TINY, "--iters", str(iters), "--out", str(tmp_path / "straight"))
    assert load_training_state(out / "last")["step"] == iters
    assert_same_weights(out / "last", tmp_path / "straight" / "last")
    # No step lost or repeated: the same records, step by step, as the uninterrupted run.
    assert [r["iter"] for r in records(out) if "loss" in r] == list(range(1, iters + 1))
    assert records(out) == records(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT], ids=["SIGUSR1", "SIGINT"])
def test_sigusr1_and_sigint_stop_the_same_way(tmp_path, train_script, sig):
    # Sent to the whole process group, as Ctrl-C and SLURM's --signal do: the data-loading
    # worker ignores it and keeps serving the step being finished.
    iters = 40
    out = tmp_path / "run"
    cmd = [sys.executable, str(train_script), *TINY, "--workers", "1", "--iters", str(iters), "--out", str(out)]
    status, output = preempt(cmd, sig, random.Random(sig.value), after="step 1/", group=True)
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    step = stopped_step(output, sig.name, iters)
    assert 1 <= step < iters and load_training_state(out / "last")["step"] == step
    assert "Traceback" not in output


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_data_workers_stops_and_resumes_bit_identically(tmp_path, train_script):
    # As SLURM's and Kubernetes' (pod) SIGTERM, or `kill -TERM -PGID`: it reaches the default two
    # data-loading workers too. They ignore it and serve the step being finished.
    iters = 16  # two epochs of 8 batches: the workers are started anew mid-run
    args = [*TINY_DEFAULT_WORKERS, "--iters", str(iters)]
    out = tmp_path / "preempted"
    status, output = preempt(
        [sys.executable, str(train_script), *args, "--out", str(out)], signal.SIGTERM, random.Random(20), group=True
    )
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output
    step = stopped_step(output, "SIGTERM", iters)
    assert load_training_state(out / "last")["step"] == step < iters

    resumed = run_train(train_script, "--out", str(out), "--resume")  # every other option from OUT/config.yaml
    assert f"resuming from {out / 'last'} at step {step}" in resumed.stdout
    run_train(train_script, *args, "--out", str(tmp_path / "straight"))
    assert_same_weights(out / "last", tmp_path / "straight" / "last")
    assert records(out) == records(tmp_path / "straight")


# A DataLoader whose workers take 1 s to reach ignore_stop_signals; SIGTERM goes to the whole group
# while they start: they must not die of it (held back, then discarded), the main process must get it.
SLOW_WORKER_START = """
import os, signal, sys, time
import torch
from refineseg.training.run_state import StopSignals, ignore_stop_signals, shut_down_workers, stop_signals_blocked

def slow_init(worker_id):
    time.sleep(1.0)
    ignore_stop_signals(worker_id)

loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_init_fn=slow_init)
with StopSignals() as stop:
    with stop_signals_blocked():
        iterator = iter(loader)
    os.killpg(0, signal.SIGTERM)
    batches = [batch.tolist() for batch in iterator]
    shut_down_workers(iterator)
print(stop.received.name, batches, flush=True)
"""


def test_data_workers_starting_when_a_group_signal_comes_survive_it(tmp_path):
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_WORKER_START)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        preexec_fn=default_signals,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "SIGTERM [[0, 1], [2, 3], [4, 5], [6, 7]]"


@pytest.mark.usefixtures("one_thread")
def test_a_data_worker_killed_by_the_stop_signal_still_ends_the_run_as_a_stop(tmp_path, monkeypatch):
    # Where workers start without the blocked mask (start methods other than fork), the signal can kill
    # one before it ignores it; the step in progress is then lost, but the run stops as asked, exit 75.
    config = TrainConfig(
        model="lw_refinenet_mbv2",
        dataset="synthetic",
        crop=64,
        batch_size=2,
        synthetic_train=8,
        synthetic_val=2,
        synthetic_size=64,
        workers=0,
        iters=6,
        val_interval=0,
        ckpt_interval=2,
        out=str(tmp_path / "run"),
    )
    step_once = trainer.optimizer_step

    def worker_dies_in_step_3(*args, **kwargs):
        if kwargs["step"] == 3:
            signal.raise_signal(signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")
        return step_once(*args, **kwargs)

    monkeypatch.setattr(trainer, "optimizer_step", worker_dies_in_step_3)
    result = train(config)
    assert (result.preempted, result.exit_code, result.step) == (True, PREEMPTED_EXIT_CODE, 2)
    assert load_training_state(tmp_path / "run" / "last")["step"] == 2
    monkeypatch.setattr(
        trainer,
        "optimizer_step",
        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")),
    )
    with pytest.raises(RuntimeError, match="exited unexpectedly"):  # without a stop signal it stays an error
        train(dataclasses.replace(config, resume=True))


def _rank_pid(torchrun: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process with ``RANK=rank`` (Linux /proc)."""
    try:
        tasks = Path(f"/proc/{torchrun.pid}/task").iterdir()
        children = [int(pid) for task in tasks for pid in (task / "children").read_text().split()]
        for pid in children:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                return pid
    except OSError as e:
        pytest.skip(f"cannot find torchrun's worker processes in /proc ({e})")
    pytest.skip("cannot find torchrun's worker processes in /proc")


@pytest.mark.slow
def test_ddp_ranks_stop_after_the_same_step_when_one_is_signalled(tmp_path, train_script):
    # Only rank 1 gets SIGUSR1; rank 0 (which writes last/ and prints) must stop after the same step.
    iters = 40
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(train_script),
        *TINY,
        "--iters",
        str(iters),
        "--out",
        str(out),
    ]
    status, output = preempt(cmd, signal.SIGUSR1, random.Random(7), target=lambda p: _rank_pid(p, 1))
    step = stopped_step(output, "a signal to another process", iters)
    assert 2 <= step < iters
    assert load_training_state(out / "last")["step"] == step
    assert status != 0 and f"exitcode  : {PREEMPTED_EXIT_CODE}" in output  # torchrun reports the ranks' 75 as a failure
