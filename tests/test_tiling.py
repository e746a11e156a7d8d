"""Tiled inference: spans, blending windows, equality with whole-image and with a naive blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refineseg
from refineseg.inference import segment
from refineseg.tiling import _windows, predict_tiled, tile_spans


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return refineseg.create_model("lw_refinenet_mbv2", num_classes=5).eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 170, 3), dtype=np.uint8)
    img[40:90, 30:120] = (200, 30, 30)  # some structure so classes vary
    return img


def test_tile_spans_cover_the_axis_with_the_requested_overlap():
    spans = tile_spans(1000, 256, 64)
    assert spans[0] == (0, 256) and spans[-1][1] == 1000
    assert all(b[0] - a[0] == 192 for a, b in zip(spans, spans[1:]))
    assert all(a[1] - b[0] == 64 for a, b in zip(spans[:-2], spans[1:-1]))
    assert tile_spans(200, 256, 64) == [(0, 200)]


def test_neighbouring_windows_sum_to_one_over_their_overlap():
    spans = tile_spans(500, 128, 40)
    windows = _windows(spans)
    total = torch.zeros(500)
    for (s, e), w in zip(spans, windows):
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(500))
    assert all(w.min() > 0 for w in windows)


def test_one_tile_equals_whole_image_inference(model, image):
    expected = segment(model, image)
    assert np.array_equal(predict_tiled(model, image, tile=256, overlap=32, progress=False), expected)


def test_tiles_match_a_naive_full_resolution_blend(model, image):
    tile, overlap = 64, 20
    labels = predict_tiled(model, image, tile=tile, overlap=overlap, progress=False)

    # Independent reference: blend every tile's weighted logits into a full-size canvas.
    h, w = image.shape[:2]
    rows, cols = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    canvas = torch.zeros(5, h, w, dtype=torch.float64)
    x = refineseg.inference.preprocess(image, model.config.mean, model.config.std)
    with torch.no_grad():
        for (y0, y1), wy in zip(rows, _windows(rows)):
            for (x0, x1), wx in zip(cols, _windows(cols)):
                logits = model(x[:, :, y0:y1, x0:x1])[0].double()
                canvas[:, y0:y1, x0:x1] += logits * (wy[:, None] * wx[None, :]).double()
    expected = canvas.argmax(0).numpy().astype(np.uint8)
    agreement = (labels == expected).mean()
    assert agreement >= 0.999, agreement  # the row carry is float16: only near-ties may differ
    assert len(np.unique(expected)) > 1


def test_thin_last_tiles_are_padded_to_the_minimum_size(model):
    image = np.random.default_rng(1).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    labels = predict_tiled(model, image, tile=64, overlap=8, progress=False)  # last tiles are 14 and 44 px
    assert labels.shape == (70, 100) and labels.max() < 5


def test_writes_into_a_given_array(model, image):
    out = np.full(image.shape[:2], 255, np.uint8)
    result = predict_tiled(model, image, tile=96, overlap=16, out=out, progress=False)
    assert result is out and out.max() < 5


def test_rejects_bad_tiling_options(model, image):
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(model, image, tile=64, overlap=64)
    with pytest.raises(ValueError, match="tile"):
        predict_tiled(model, image, tile=16, overlap=0)


def test_predict_cli_tiled_mode_reads_and_writes_tiff(tmp_path, model):
    import tifffile

    from refineseg.prediction import PredictConfig, run_predict

    model.save_pretrained(tmp_path / "ckpt")
    image = np.random.default_rng(2).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "scan.tif", image)
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "photo.png")
    written = run_predict(PredictConfig(checkpoint=str(tmp_path / "ckpt"), inputs=[str(tmp_path / "scan.tif"),
                                        str(tmp_path / "photo.png")], out=str(tmp_path / "out"), tile=96, overlap=24))
    assert [p.name for p in written] == ["scan.tif", "photo.png"]
    expected = predict_tiled(model, image, tile=96, overlap=24, progress=False)
    assert np.array_equal(tifffile.imread(written[0]), expected)
    assert np.array_equal(np.asarray(Image.open(written[1])), expected)
    assert (tmp_path / "out" / "scan_overlay.png").is_file()


def test_memory_mapped_input_gives_the_same_labels(tmp_path, model, image):
    import tifffile

    from refineseg.data import read_large_image

    tifffile.imwrite(tmp_path / "big.tif", image)
    mapped = read_large_image(tmp_path / "big.tif")
    assert isinstance(mapped, np.memmap)
    expected = predict_tiled(model, image, tile=64, overlap=16, progress=False)
    assert np.array_equal(predict_tiled(model, mapped, tile=64, overlap=16, progress=False), expected)
    assert np.array_equal(np.asarray(mapped), image)  # released pages are read back from the file
