"""Progress of long commands (export's steps, `refineseg models`) and third-party chatter kept out of sight."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings

import pytest

from refineseg.utils.progress import Captured, Steps, progress, progress_line


def chatter(tag: str) -> None:
    """What torch.onnx / onnxscript / onnxruntime do: print, log, warn, and write from C to the descriptors."""
    print(f"{tag}: python print")
    print(f"{tag}: python stderr", file=sys.stderr)
    logging.getLogger("onnxscript.optimizer").warning(f"{tag}: a log record")
    warnings.warn(f"{tag}: a warning", UserWarning, stacklevel=1)
    os.write(1, f"{tag}: C-level stdout\n".encode())
    os.write(2, f"{tag}: C-level stderr\n".encode())


def test_captured_takes_every_kind_of_output(capfd):
    with Captured() as captured:
        chatter("hidden")
    out, err = capfd.readouterr()
    assert "hidden" not in out + err
    text = captured.text()
    for kind in ("python print", "python stderr", "a log record", "a warning", "C-level stdout", "C-level stderr"):
        assert f"hidden: {kind}" in text, kind
    print("after")  # the descriptors and streams are back
    os.write(2, b"after C\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == "after C\n"


def test_steps_without_a_terminal_print_progress_lines_and_hide_the_chatter(capfd):
    with Steps(["tracing", "validation"], "export", interval=0.1, terminal=False) as steps:
        with steps.step("tracing"):
            chatter("hidden")
            time.sleep(1.0)
        with steps.step("validation"):
            pass
        steps.say("check 64x64: fine")
    out, err = capfd.readouterr()
    assert "hidden" not in out + err
    assert out == "check 64x64: fine\n"
    lines = err.splitlines()
    assert lines[0] == "export: [1/2] tracing"
    assert any(line.startswith("export: tracing ... ") and line.endswith(" s") for line in lines[1:-3])
    assert lines[-3].startswith("export: tracing done (") and lines[-2] == "export: [2/2] validation"
    assert lines[-1].startswith("export: validation done (")


def test_a_failed_step_shows_what_was_captured(capfd):
    steps = Steps(["tracing"], "export", terminal=False)
    with pytest.raises(RuntimeError, match="exporter failed"), steps, steps.step("tracing"):
        chatter("shown")
        raise RuntimeError("exporter failed")
    _, err = capfd.readouterr()
    assert "--- output of the failed step (tracing) ---" in err
    assert "shown: python print" in err and "shown: C-level stderr" in err and "shown: a log record" in err


def test_verbose_steps_let_the_chatter_through(capfd):
    with Steps(["tracing"], "export", verbose=True, terminal=False) as steps, steps.step("tracing"):
        chatter("visible")
    out, err = capfd.readouterr()
    assert "visible: python print" in out and "visible: C-level stderr" in err


def test_progress_without_a_terminal_prints_a_line_now_and_then(capfd):
    def slow():
        for i in range(4):
            time.sleep(0.15)
            yield i

    assert list(progress(slow(), "models", total=4, interval=0.1, terminal=False)) == [0, 1, 2, 3]
    lines = capfd.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(r"models: [123]/4 \(\d+ %\), [\d.]+ it/s, ETA \d+:\d\d", line) for line in lines)
    assert list(progress([1, 2], "models", terminal=False)) == [1, 2]  # fast: no line at all
    assert capfd.readouterr().err == ""


def test_progress_line_gives_rate_and_eta():
    assert progress_line("evaluate", 40, 100, 20.0) == "evaluate: 40/100 (40 %), 2.00 it/s, ETA 0:30"
    assert progress_line("evaluate", 10, 1000, 5.0) == "evaluate: 10/1000 (1 %), 2.00 it/s, ETA 8:15"
    assert progress_line("walk", 3, None, 1.5) == "walk: 3/?, 2.00 it/s"


def test_export_takes_verbose_and_models_shows_progress(capsys, monkeypatch):
    from refineseg.cli import models
    from refineseg.cli.app import build_parser, main

    args = build_parser().parse_args(["export", "--checkpoint", "c", "--out", "m.onnx", "--verbose"])
    assert args.verbose is True
    monkeypatch.setattr("refineseg.utils.progress.INTERVAL_S", 0.0)  # a progress line for every variant
    monkeypatch.setattr(models, "progress", lambda items, desc: progress(items, desc, interval=0.0, terminal=False))
    assert main(["models", "lw_refinenet_mbv2", "lw_refinenet18", "--size", "64"]) == 0
    captured = capsys.readouterr()
    assert "| lw_refinenet_mbv2 " in captured.out and "| lw_refinenet18 " in captured.out
    assert "models: 1/2" in captured.err
