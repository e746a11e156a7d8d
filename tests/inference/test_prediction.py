"""expand_inputs and run_predict: input expansion, label PNGs equal to segment(), overlays, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import CLASS_NAMES, PALETTE, make_model
from PIL import Image

from refineseg.cli.predict import PredictConfig, run_predict
from refineseg.data import read_image, write_image
from refineseg.errors import DataError
from refineseg.inference.predict import expand_inputs
from refineseg.inference.predictor import segment
from refineseg.report.visualize import overlay

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(seed: int, height: int = 64, width: int = 80) -> np.ndarray:
    """Smooth random colour blobs, so the untrained model sees some structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def test_expand_inputs_files_folders_globs(tmp_path):
    folder = tmp_path / "photos"
    for name in ("b.jpg", "a.png", "c.PNG"):
        write_image(folder / name, photo(0, 40, 40))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    write_image(folder / "sub" / "d.png", photo(1, 40, 40))
    single = tmp_path / "single.bmp"
    write_image(single, photo(2, 40, 40))

    found = expand_inputs(
        [str(single), str(folder), str(folder / "*.png"), str(folder / "a.png"), str(tmp_path / "**" / "d.png")]
    )
    assert found == [single, folder / "a.png", folder / "b.jpg", folder / "c.PNG", folder / "sub" / "d.png"]
    assert expand_inputs([folder / "sub"]) == [folder / "sub" / "d.png"]


@pytest.mark.parametrize("what", ["missing", "pattern", "empty_folder", "nothing"])
def test_expand_inputs_errors_name_the_input(tmp_path, what):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    item = {
        "missing": tmp_path / "nope.jpg",
        "pattern": tmp_path / "*.jpg",
        "empty_folder": tmp_path / "empty",
        "nothing": None,
    }[what]
    with pytest.raises(DataError) as err:
        expand_inputs([] if item is None else [str(item)])
    if item is not None:
        assert str(err.value).startswith(f"{item}: ")


def test_run_predict_writes_segment_results_and_overlays(checkpoint, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    images = {
        tmp_path / "x" / "scene.png": photo(0),
        tmp_path / "y" / "scene.jpg": photo(1, 72, 64),
        tmp_path / "y" / "other.png": photo(2),
    }
    for path, image in images.items():
        write_image(path, image)
    out = tmp_path / "out"
    written = run_predict(
        PredictConfig(
            checkpoint=str(checkpoint),
            out=str(out),
            device="cpu",
            precision="fp32",
            inputs=[str(tmp_path / "x"), str(tmp_path / "y" / "*")],
        )
    )
    # Same stem twice: both get their extension (the rule of refineseg.inference.predict). Globs come back sorted.
    assert written == [out / "scene_png.png", out / "other.png", out / "scene_jpg.png"]
    assert (out / "manifest.csv").read_text().splitlines()[1:] == [
        f"{tmp_path / 'x' / 'scene.png'},scene_png.png,scene_png_overlay.png",
        f"{tmp_path / 'y' / 'other.png'},other.png,other_overlay.png",
        f"{tmp_path / 'y' / 'scene.jpg'},scene_jpg.png,scene_jpg_overlay.png",
    ]

    model = make_model()
    sources = [tmp_path / "x" / "scene.png", tmp_path / "y" / "other.png", tmp_path / "y" / "scene.jpg"]
    classes_seen = set()
    for label_path, source in zip(written, sources):
        image = read_image(source)  # the JPEG as decoded, not the array before compression
        expected = segment(model, image)
        with Image.open(label_path) as png:
            assert png.mode == "P"
            assert png.getpalette()[:12] == [v for color in PALETTE for v in color]
            labels = np.asarray(png)
        assert np.array_equal(labels, expected)
        classes_seen.update(np.unique(labels).tolist())

        overlay_path = label_path.with_name(label_path.stem + "_overlay.png")
        with Image.open(overlay_path) as png:
            shown = np.asarray(png.convert("RGB"))
        assert np.array_equal(shown, np.asarray(overlay(image, expected, PALETTE, CLASS_NAMES, alpha=0.5)))
        assert shown.shape[1] > image.shape[1]  # legend on the right
    assert len(classes_seen) >= 2
    assert str(out) in capsys.readouterr().out.strip().splitlines()[-1]


def test_run_predict_slide_mode_without_overlay(checkpoint, tmp_path):
    source = tmp_path / "big.png"
    write_image(source, photo(3, 96, 96))
    config = PredictConfig(
        checkpoint=str(checkpoint),
        inputs=[str(source)],
        out=str(tmp_path / "out"),
        mode="slide",
        crop=64,
        stride=32,
        overlay=False,
        device="cpu",
        precision="fp32",
    )
    [label_path] = run_predict(config)
    expected = segment(make_model(), read_image(source), mode="slide", crop=64, stride=32)
    assert np.array_equal(np.asarray(Image.open(label_path)), expected)
    assert not np.array_equal(expected, segment(make_model(), read_image(source)))  # slide really differs
    assert sorted(os.listdir(tmp_path / "out")) == ["big.png", "manifest.csv"]
    assert (tmp_path / "out" / "manifest.csv").read_text() == f"input,label,overlay\n{source},big.png,\n"


def test_run_predict_never_overwrites_inputs_in_out_folder(checkpoint, tmp_path):
    source = tmp_path / "photo.png"
    write_image(source, photo(4))
    before = source.read_bytes()
    [label_path] = run_predict(
        PredictConfig(checkpoint=str(checkpoint), inputs=[str(source)], out=str(tmp_path), device="cpu")
    )
    assert label_path == tmp_path / "photo_1.png" and source.read_bytes() == before


@pytest.mark.parametrize("content", [b"this is not an image", None])
def test_corrupt_image_raises_data_error_naming_it(checkpoint, tmp_path, content):
    bad = tmp_path / "bad.jpg"
    if content is None:  # a truncated PNG
        write_image(tmp_path / "full.png", photo(5))
        content = (tmp_path / "full.png").read_bytes()[:200]
        bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="bad") as err:  # --fail-fast; by default it is skipped (test_predict_batch)
        run_predict(
            PredictConfig(
                checkpoint=str(checkpoint), inputs=[str(bad)], out=str(tmp_path / "out"), device="cpu", fail_fast=True
            )
        )
    assert str(err.value).startswith(f"{bad}: ")


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="alpha"):
        PredictConfig(checkpoint="x", inputs=["a.png"], alpha=1.5)
    with pytest.raises(ValueError, match="mode"):
        PredictConfig(checkpoint="x", inputs=["a.png"], mode="tiles")
    assert PredictConfig(checkpoint="x", inputs=["a.png"]).scales == [1.0]


def test_cli_corrupt_image_is_one_line_error(checkpoint, tmp_path, run_cli):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    result = run_cli(
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        str(bad),
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.jpg" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
