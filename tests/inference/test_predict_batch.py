"""Batch prediction that finishes: bad inputs skipped and listed, any image size, atomic outputs, resume.

Each case failed on the code before: a bad file stopped the batch with no summary, images under
32 px raised, outputs were written in place (a crash left a truncated file), folder GIFs were
ignored, and there was no ``--skip-existing`` / ``--fail-fast``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import make_model
from PIL import Image

from refineseg.cli.app import main as cli_main
from refineseg.cli.evaluate import EvalConfig, run_evaluate
from refineseg.cli.predict import EXIT_SOME_FAILED
from refineseg.data import SYNTHETIC_CLASSES, read_image, write_image, write_label_png
from refineseg.data import io as data_io
from refineseg.inference.predictor import segment
from refineseg.utils import files
from refineseg.utils.files import remove_dead_temporaries

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_model()


def photo(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    """Smooth random colour blobs (the untrained model then predicts more than one class)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def labels_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.asarray(img)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if files.TMP_MARK in p.name)


def predict(checkpoint: Path, out: Path, *args: str) -> int:
    # fp32: the labels are compared with segment()'s (--precision auto may pick bf16 on this CPU)
    return cli_main(
        ["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--precision", "fp32", *args]
    )


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """a.png, d.png good; b.png a truncated PNG; c.jpg not an image at all."""
    folder = tmp_path / "in"
    write_image(folder / "a.png", photo(0))
    write_image(folder / "d.png", photo(1))
    write_image(tmp_path / "full.png", photo(2))
    (folder / "b.png").write_bytes((tmp_path / "full.png").read_bytes()[:150])
    (folder / "c.jpg").write_bytes(b"just some text")
    return folder


def test_bad_inputs_are_listed_and_the_rest_written(checkpoint, model, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    old_umask = os.umask(0o022)
    try:
        code = predict(checkpoint, out, str(mixed_folder))
    finally:
        os.umask(old_umask)
    captured = capsys.readouterr()
    assert code == EXIT_SOME_FAILED and code not in (0, 1, 2, 75)

    for name in ("a", "d"):
        assert np.array_equal(labels_of(out / f"{name}.png"), segment(model, read_image(mixed_folder / f"{name}.png")))
        assert (out / f"{name}_overlay.png").is_file()
    bad = [mixed_folder / "b.png", mixed_folder / "c.jpg"]
    lines = (out / "errors.txt").read_text().splitlines()
    assert len(lines) == 2 and all(
        line.startswith(f"{path}: ") and len(line) > len(f"{path}: ") for line, path in zip(lines, bad)
    ), lines
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.png", "d.png", "d_overlay.png", "errors.txt", "manifest.csv"]
    for name in os.listdir(out):  # usual permissions under umask 022, not tempfile's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o644, name

    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("2 written, 2 failed") and str(out / "errors.txt") in summary
    assert [line.split(": ")[1] for line in captured.err.splitlines() if line.startswith("error: ")] == [
        str(p) for p in bad
    ]
    assert "Traceback" not in captured.err


def test_fail_fast_stops_at_the_first_bad_input(checkpoint, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(checkpoint, out, "--fail-fast", str(mixed_folder)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {mixed_folder / 'b.png'}: ")
    assert (out / "a.png").is_file() and not (out / "d.png").exists() and not (out / "errors.txt").exists()


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli_main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--skip-existing" in text and f"exits with status {EXIT_SOME_FAILED}" in text


def test_skip_existing_resumes_and_a_clean_run_removes_errors_txt(checkpoint, model, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(checkpoint, out, str(mixed_folder)) == EXIT_SOME_FAILED
    sentinel = b"kept because --skip-existing"
    (out / "a.png").write_bytes(sentinel)  # a's outputs exist: it must not be redone
    (out / "d_overlay.png").unlink()  # d lacks its overlay: it must be redone
    write_image(mixed_folder / "b.png", photo(3))  # the bad inputs are fixed
    (mixed_folder / "c.jpg").unlink()
    write_image(mixed_folder / "c.jpg", photo(4))
    capsys.readouterr()

    assert predict(checkpoint, out, "--skip-existing", str(mixed_folder)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("3 written, 0 failed, 1 skipped")
    assert (out / "a.png").read_bytes() == sentinel
    assert not (out / "errors.txt").exists()  # stale from the first run
    for name in ("b", "c", "d"):
        assert np.array_equal(
            labels_of(out / f"{name}.png"), segment(model, read_image(next(mixed_folder.glob(f"{name}.*"))))
        )
        assert (out / f"{name}_overlay.png").is_file()


@pytest.mark.parametrize("size", [(1, 1), (3000, 5), (5, 70), (31, 31)])
def test_images_below_the_minimum_side_are_padded_and_cropped_back(model, size):
    image = photo(5, *size)
    labels = segment(model, image)
    assert labels.shape == size
    # Independently: pad the photo itself by repeating its edge pixels, segment, crop.
    padded = np.pad(image, ((0, max(0, 32 - size[0])), (0, max(0, 32 - size[1])), (0, 0)), mode="edge")
    assert np.array_equal(labels, segment(model, padded)[: size[0], : size[1]])
    slide = segment(model, image, mode="slide", crop=256, stride=256)
    assert slide.shape == size
    if max(size) <= 256:  # one window: the same as whole-image inference
        assert np.array_equal(slide, labels)


def test_tiny_images_segment_to_their_size_in_every_mode(checkpoint, tmp_path):
    sizes = {"dot": (1, 1), "strip": (300, 5), "almost": (31, 31)}
    for name, size in sizes.items():
        write_image(tmp_path / "in" / f"{name}.png", photo(6, *size))
    modes = {
        "whole": [],
        "slide": ["--mode", "slide", "--crop", "64"],
        "tiled": ["--tile", "64", "--overlap", "16"],
        "multiscale": ["--mode", "multiscale", "--scales", "0.5", "1"],
    }
    for mode, flags in modes.items():
        out = tmp_path / mode
        assert predict(checkpoint, out, str(tmp_path / "in"), *flags) == 0, mode
        for name, size in sizes.items():
            assert labels_of(out / f"{name}.png").shape == size, (mode, name)
            with Image.open(out / f"{name}_overlay.png") as shown:  # photo + legend at least
                assert shown.height >= size[0] and shown.width > size[1]


def animated_gif(path: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = (36, 40)) -> np.ndarray:
    """A GIF whose frames are halves of two flat colours (exact in a palette); returns frame 0 as RGB."""
    frames = []
    for k, colour in enumerate(colours):
        frame = np.zeros((*size, 3), np.uint8)
        frame[:, : size[1] // 2] = colour
        frame[:, size[1] // 2 :] = colours[(k + 1) % len(colours)]
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    return frames[0]


def test_animated_gif_in_a_folder_or_named_uses_the_first_frame_with_a_note(checkpoint, model, tmp_path, caplog):
    colours = [(200, 30, 30), (20, 180, 60), (40, 40, 220)]
    frame0 = animated_gif(tmp_path / "in" / "clip.gif", colours)
    animated_gif(tmp_path / "named" / "clip2.gif", colours)
    write_image(tmp_path / "in" / "still.png", photo(7))
    expected = segment(model, frame0)
    with caplog.at_level(logging.INFO):
        assert predict(checkpoint, tmp_path / "out", str(tmp_path / "in"), str(tmp_path / "named" / "clip2.gif")) == 0
    assert np.array_equal(labels_of(tmp_path / "out" / "clip.png"), expected)
    assert np.array_equal(labels_of(tmp_path / "out" / "clip2.png"), expected)
    assert (tmp_path / "out" / "still.png").is_file()
    notes = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert len(notes) == 2 and "clip.gif: 3 frames, using the first" in notes[0] and "clip2.gif: 3" in notes[1]

    caplog.clear()  # once per file: reading it again adds no note
    read_image(tmp_path / "in" / "clip.gif")
    assert not [r for r in caplog.records if "frames" in r.getMessage()]


def test_multi_page_tiff_notes_the_first_page(tmp_path, caplog):
    tifffile = pytest.importorskip("tifffile")
    pages = np.random.default_rng(0).integers(0, 255, (2, 8, 9, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for page in pages:
            tif.write(page, photometric="rgb")
    with caplog.at_level(logging.INFO):
        assert np.array_equal(data_io.read_large_image(tmp_path / "stack.tif"), pages[0])
    assert any("stack.tif: 2 frames, using the first" in r.getMessage() for r in caplog.records)


class PartialWriter:
    """Stands in for a Pillow image whose save writes part of a PNG, then is interrupted."""

    def __init__(self, error: BaseException):
        self.error = error

    def save(self, fp, format=None):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n partial")
        raise self.error


def test_interrupted_overlay_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch, capsys):
    for k in range(3):
        write_image(tmp_path / "in" / f"p{k}.png", photo(k))
    monkeypatch.setattr("refineseg.inference.predict.overlay", lambda *a, **k: PartialWriter(KeyboardInterrupt()))
    out = tmp_path / "out"
    assert predict(checkpoint, out, str(tmp_path / "in")) == 130  # the CLI's status for Ctrl-C
    assert sorted(os.listdir(out)) == ["manifest.csv", "p0.png"]  # the label map is complete; no overlay, no temporary
    labels_of(out / "p0.png")
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("interrupted: 0 written, 0 failed, 3 not processed")


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "labels.png"
    write_label_png(target, np.zeros((4, 4), np.uint8), [(0, 0, 0)])
    before = target.read_bytes()
    monkeypatch.setattr(
        Image.Image, "save", lambda self, fp, format=None, **kw: PartialWriter(OSError(errno.EIO, "I/O error")).save(fp)
    )
    with pytest.raises(OSError):
        write_label_png(target, np.ones((4, 4), np.uint8), [(0, 0, 0), (9, 9, 9)])
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["labels.png"]


def test_remove_dead_temporaries_spares_live_writers(tmp_path):
    live = tmp_path / f".a.png{files.TMP_MARK}{os.getppid()}.png"
    dead = tmp_path / f".b.png{files.TMP_MARK}999999999.png"
    mine = tmp_path / f".c.png{files.TMP_MARK}{os.getpid()}.png"
    for path in (live, dead, mine, tmp_path / "b.png"):
        path.write_bytes(b"x")
    assert remove_dead_temporaries(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "b.png"])


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "synthetic"
    make_model(class_names=SYNTHETIC_CLASSES, palette=None).save_pretrained(path)
    return path


def test_evaluate_outputs_are_written_atomically(synthetic_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"from": "an earlier run"}\n')
    config = EvalConfig(
        checkpoint=str(synthetic_checkpoint),
        dataset="synthetic",
        out=str(out),
        device="cpu",
        synthetic_val=1,
        synthetic_size=48,
    )

    real_fsync = os.fsync

    def failing_fsync(fd):  # the disk fails while the new metrics.json is being written
        if "metrics.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        run_evaluate(config)
    assert json.loads((out / "metrics.json").read_text()) == {"from": "an earlier run"}
    assert os.listdir(out) == ["metrics.json"]
    monkeypatch.undo()

    pytest.importorskip("matplotlib")

    def interrupted_savefig(figure, path, **kwargs):  # matplotlib writes part of the PNG, then Ctrl-C
        PartialWriter(KeyboardInterrupt()).save(path)

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", interrupted_savefig)
    with pytest.raises(KeyboardInterrupt):
        run_evaluate(config)
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 1
    assert sorted(os.listdir(out)) == ["metrics.json", "per_image.csv"]  # no confusion_matrix.png, whole or partial


def test_a_full_disk_stops_the_batch_with_one_line_and_the_summary(checkpoint, tmp_path, monkeypatch, capsys):
    for k in range(3):
        write_image(tmp_path / "in" / f"p{k}.png", photo(k))

    def full_disk(self, fp, format=None, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    assert predict(checkpoint, out, str(tmp_path / "in")) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {out / 'p0.png'}: no space left on device")
    assert captured.out.strip().splitlines()[-1].startswith("stopped: 0 written, 0 failed, 3 not processed")
    assert os.listdir(out) == ["manifest.csv"]  # written before any prediction
