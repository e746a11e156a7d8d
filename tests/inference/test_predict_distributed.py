"""``torchrun --nproc_per_node 2 -m refineseg predict`` (issue 19): the inputs split by rank, each read
once, outputs byte-identical to one process, one errors.txt and one summary; a rank killed mid-run,
then a rerun with ``--skip-existing``, completes the set. Two gloo processes on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import make_model
from test_predict_batch import photo

from refineseg.cli.app import main as cli_main
from refineseg.cli.predict import EXIT_SOME_FAILED
from refineseg.data import write_image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FLAGS = ["--device", "cpu", "--precision", "fp32"]

# torchrun runs this instead of `-m refineseg` where reads are counted: every read_image call of the
# batch goes to READ_LOG/<rank>; with KILL_RANK1_AT=k, rank 1 SIGKILLs itself at its k-th read.
READ_COUNTER = """
import os, signal, sys
from refineseg.cli.app import main
from refineseg.inference import predict

original, reads = predict.read_image, []

def counted(path):
    reads.append(path)
    with open(os.path.join(os.environ["READ_LOG"], os.environ["RANK"]), "a") as f:
        f.write(f"{path}\\n")
    if os.environ["RANK"] == "1" and len(reads) == int(os.environ.get("KILL_RANK1_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path)

predict.read_image = counted
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, input folder: 5 photos + one corrupt file, reference output of one process)."""
    root = tmp_path_factory.mktemp("ddp")
    make_model().save_pretrained(root / "ckpt")
    for k in range(5):
        write_image(root / "in" / f"img{k}.png", photo(k, 48, 64))
    (root / "in" / "bad.png").write_bytes(b"not a png at all")
    code = cli_main(
        ["predict", "--checkpoint", str(root / "ckpt"), "--out", str(root / "reference"), *FLAGS, str(root / "in")]
    )
    assert code == EXIT_SOME_FAILED
    return root / "ckpt", root / "in", root / "reference"


def torchrun(
    script: list[str], checkpoint: Path, inputs: Path, out: Path, *extra: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *script,
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        *FLAGS,
        *extra,
        str(inputs),
    ]
    return subprocess.run(command, env=env or ENV, capture_output=True, text=True, timeout=300)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_processes_split_the_inputs_and_write_what_one_process_writes(batch, tmp_path):
    checkpoint, inputs, reference = batch
    run = torchrun(["-m", "refineseg"], checkpoint, inputs, tmp_path / "out")
    assert run.returncode != 0 and "exitcode  : 3" in run.stderr  # rank 0 exits EXIT_SOME_FAILED
    assert files_of(tmp_path / "out") == files_of(reference)  # labels, overlays, manifest.csv, errors.txt
    assert (tmp_path / "out" / "errors.txt").read_text().startswith(f"{inputs / 'bad.png'}: ")

    shares = sorted(re.findall(r"^rank (\d) of 2: (\d+) of 6 inputs$", run.stdout, re.M))
    assert shares == [("0", "3"), ("1", "3")], run.stdout
    summaries = [line for line in run.stdout.splitlines() if " written, " in line]
    assert len(summaries) == 1 and summaries[0].startswith("5 written, 1 failed"), run.stdout


def test_a_killed_rank_then_skip_existing_completes_the_set(batch, tmp_path):
    checkpoint, inputs, reference = batch
    (tmp_path / "counter.py").write_text(textwrap.dedent(READ_COUNTER))
    out, logs = tmp_path / "out", [tmp_path / "reads1", tmp_path / "reads2"]
    for log in logs:
        log.mkdir()

    killed = torchrun(
        [str(tmp_path / "counter.py")],
        checkpoint,
        inputs,
        out,
        env={**ENV, "READ_LOG": str(logs[0]), "KILL_RANK1_AT": "2"},
    )
    assert killed.returncode != 0 and "(SIGKILL)" in killed.stderr, killed.stderr
    reads = {rank: (logs[0] / rank).read_text().splitlines() for rank in ("0", "1") if (logs[0] / rank).exists()}
    assert len(reads["1"]) == 2  # killed reading its second image
    everything = [path for paths in reads.values() for path in paths]
    assert len(everything) == len(set(everything))  # no image read by both
    assert len([n for n in os.listdir(out) if n.endswith(".png") and not n.startswith(".")]) < 10

    finished = {n[: -len("_overlay.png")] for n in os.listdir(out) if n.endswith("_overlay.png")}
    finished = {stem for stem in finished if (out / f"{stem}.png").is_file()}
    rerun = torchrun(
        [str(tmp_path / "counter.py")],
        checkpoint,
        inputs,
        out,
        "--skip-existing",
        env={**ENV, "READ_LOG": str(logs[1])},
    )
    assert "exitcode  : 3" in rerun.stderr, rerun.stderr
    again = [path for rank in ("0", "1") if (logs[1] / rank).exists() for path in (logs[1] / rank).read_text().split()]
    assert sorted(again) == sorted(str(p) for p in inputs.iterdir() if p.stem not in finished)  # once each
    assert files_of(out) == files_of(reference)  # complete, byte for byte, no temporaries left
    summary = [line for line in rerun.stdout.splitlines() if " written, " in line]
    assert len(summary) == 1 and re.match(rf"{len(again) - 1} written, 1 failed, {6 - len(again)} skipped", summary[0])
