"""Predict inputs (issue 20): symlink loops reported, walks that never loop, outputs of inputs with the
same stem kept apart by a recorded rule (manifest.csv), ``--tile`` below 32 px refused before any work.

On the code before, a symlink loop in a folder was silently dropped, ``**`` followed a link back into
its own folder (the same images again, a path longer each time), and the second ``photo.*`` became
``photo_1`` with nothing recording which input it came from.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import make_model
from test_predict_batch import labels_of, photo, predict

from refineseg.cli.app import main as cli_main
from refineseg.cli.predict import EXIT_SOME_FAILED, PredictConfig
from refineseg.data import read_image, write_image
from refineseg.inference import predict as predict_module
from refineseg.inference.predict import expand_inputs, output_names
from refineseg.inference.predictor import segment

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_model()


def write_photos(*paths: Path) -> None:
    for k, path in enumerate(paths):
        write_image(path, photo(k, 36, 40))


def test_symlink_loops_in_a_folder_are_reported_in_errors_txt(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    write_photos(folder / "good.png")
    os.symlink("self.png", folder / "self.png")  # a link to itself
    os.symlink("pong.jpg", folder / "ping.jpg")  # two links to each other
    os.symlink("ping.jpg", folder / "pong.jpg")
    os.symlink("gone.png", folder / "broken.png")  # a link to nothing
    os.symlink("loop", folder / "loop")  # not an image name, still a loop

    found = expand_inputs([folder])
    assert found == [folder / "good.png"]
    causes = dict(found.problems)
    assert sorted(causes) == [folder / n for n in ("broken.png", "loop", "ping.jpg", "pong.jpg", "self.png")]
    assert all("symlink loop" in causes[folder / n] for n in ("loop", "ping.jpg", "pong.jpg", "self.png"))
    assert "broken symlink" in causes[folder / "broken.png"] and "gone.png" in causes[folder / "broken.png"]

    out = tmp_path / "out"
    assert predict(checkpoint, out, str(folder)) == EXIT_SOME_FAILED
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("1 written, 5 failed")
    assert (out / "errors.txt").read_text().splitlines() == [f"{p}: {c}" for p, c in found.problems]
    assert sorted(os.listdir(out)) == ["errors.txt", "good.png", "good_overlay.png", "manifest.csv"]

    assert predict(checkpoint, out, "--fail-fast", str(folder)) == 2  # before any work
    assert capsys.readouterr().err.startswith(f"error: {found.problems[0][0]}: ")


def test_a_named_symlink_loop_is_a_one_line_error(tmp_path, capsys):
    os.symlink("x.png", tmp_path / "x.png")
    assert cli_main(["predict", "--checkpoint", "ckpt", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.png'}: symlink loop (too many levels of symbolic links)\n"


def test_recursive_globs_never_loop_and_report_links_back(tmp_path):
    root = tmp_path / "in"
    write_photos(
        root / "a.png", root / "sub" / "b.png", root / "sub" / "deep" / "c.png", tmp_path / "elsewhere" / "d.png"
    )
    os.symlink("..", root / "sub" / "up")  # back to in/: a loop
    os.symlink(".", root / "sub" / "deep" / "here")  # to itself: a loop
    os.symlink("../elsewhere", root / "ext")  # a linked folder outside: followed, as glob does

    found = expand_inputs([f"{root}/**/*.png"])
    assert found == [root / "a.png", root / "ext" / "d.png", root / "sub" / "b.png", root / "sub" / "deep" / "c.png"]
    assert dict(found.problems) == {
        root / "sub" / "up": f"symlink loop: leads back to {root}; not followed",
        root / "sub" / "deep" / "here": f"symlink loop: leads back to {root / 'sub' / 'deep'}; not followed",
    }
    assert expand_inputs([f"{root}/**"]) == found  # '**' last: every file below


def test_recursive_walks_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module, "MAX_WALK_DEPTH", 2)
    a = tmp_path / "a"
    write_photos(a / "1.png", a / "b" / "c" / "3.png", a / "b" / "c" / "d" / "4.png")
    found = expand_inputs([f"{tmp_path}/a/**/*.png"])
    assert found == [tmp_path / "a" / "1.png", tmp_path / "a" / "b" / "c" / "3.png"]
    assert found.problems == [(tmp_path / "a" / "b" / "c", "more than 2 folders deep; not walked further")]


def test_patterns_match_like_glob_without_loops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_photos(
        *(
            Path(p)
            for p in (
                "x1.png",
                "x2.jpg",
                ".hidden.png",
                "a/x3.png",
                "a/.h/x4.png",
                "a/b/y5.gif",
                "a/b/c/x6.tiff",
                "[ab]/x7.png",
            )
        )
    )
    Path("a/notes.txt").write_text("no image")
    for pattern in (
        "*.png",
        "**/*.png",
        "**/x*",
        "a/**",
        "a/*/*",
        "*/x?.png",
        "**/.h*/*.png",
        ".*.png",
        f"{tmp_path}/**/*.gif",
        "a/**/b/**/*.tiff",
        "[[]ab]/*.png",
    ):
        expected = [
            Path(p)
            for p in sorted(glob.glob(pattern, recursive=True))
            if os.path.isfile(p) and Path(p).suffix.lower() in (".png", ".jpg", ".gif", ".tiff")
        ]
        assert expand_inputs([pattern]) == expected, pattern


def test_output_names_keep_same_stems_apart_by_the_rule(tmp_path):
    d, a, b, out = (tmp_path / n for n in ("d", "a", "b", "out"))
    paths = [
        d / "photo.jpg",
        d / "photo.png",
        a / "x.png",
        b / "x.png",
        a / "y.png",
        b / "y.png",
        a / "y.jpg",
        d / "Photo_JPG.tif",
        tmp_path / "z.png",
        a / "z.png",
        out / "q.png",
        d / "solo.png",
        d / "noext",
    ]
    assert output_names(paths, out) == [
        "photo_jpg",
        "photo_png",  # 1. extensions differ
        "a__x",
        "b__x",  # 2. folders from the common one
        "a__y_png",
        "b__y_png",
        "a__y_jpg",  # 3. both
        "Photo_JPG_1",  # its files would be photo_jpg's on a case-insensitive file system
        "z",
        "a__z",  # in the common folder itself: the stem
        "q_1",  # out/q.png is an input: never overwritten
        "solo",
        "noext",
    ]
    assert output_names(paths[::-1], out)[::-1][2:7] == output_names(paths, out)[2:7]  # order-free


def test_same_stems_cli_outputs_and_manifest(checkpoint, model, tmp_path):
    inputs = [
        tmp_path / "d" / "photo.jpg",
        tmp_path / "d" / "photo.png",
        tmp_path / "a" / "x.png",
        tmp_path / "b" / "x.png",
    ]
    write_photos(*inputs)
    out = tmp_path / "out"
    assert predict(checkpoint, out, str(tmp_path / "d"), f"{tmp_path}/*/x.png") == 0
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.reader(f))
    names = ["photo_jpg", "photo_png", "a__x", "b__x"]
    assert rows == [["input", "label", "overlay"]] + [
        [str(p), f"{n}.png", f"{n}_overlay.png"] for p, n in zip(inputs, names)
    ]
    for source, name in zip(inputs, names):  # each output is its own input's
        assert np.array_equal(labels_of(out / f"{name}.png"), segment(model, read_image(source)))
    outputs = [f"{n}{tail}" for n in names for tail in (".png", "_overlay.png")]
    assert sorted(os.listdir(out)) == sorted(["manifest.csv", *outputs])

    assert predict(checkpoint, out, "--no-overlay", str(tmp_path / "a" / "x.png")) == 0  # manifest: this run only
    assert (out / "manifest.csv").read_text() == f"input,label,overlay\n{inputs[2]},x.png,\n"


@pytest.mark.parametrize("tile", ["16", "31", "0"])
def test_tile_below_32_px_is_a_one_line_error_before_any_work(tmp_path, capsys, tile):
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "none"),
                "--out",
                str(out),
                "--tile",
                tile,
                str(tmp_path / "missing.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "tile" in err and ">= 32" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="tile: must be >= 32"):
        PredictConfig(checkpoint="c", inputs=["x.png"], tile=16, overlap=8)
    assert PredictConfig(checkpoint="c", inputs=["x.png"], tile=32, overlap=8).tile == 32
