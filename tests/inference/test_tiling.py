"""Tiled inference: spans, blending windows, equality with whole-image and with a naive blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refineseg
from refineseg.inference import tiling
from refineseg.inference.predictor import segment
from refineseg.inference.tiling import _windows, downsample, predict_tiled, preview, tile_logits, tile_spans

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tiles: one thread is fastest on a busy machine


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
    x = refineseg.inference.predictor.preprocess(image, model.config.mean, model.config.std)
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

    from refineseg.cli.predict import PredictConfig, run_predict

    model.save_pretrained(tmp_path / "ckpt")
    image = np.random.default_rng(2).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "scan.tif", image)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "photo.png")
    written = run_predict(
        PredictConfig(
            checkpoint=str(tmp_path / "ckpt"),
            inputs=[str(tmp_path / "scan.tif"), str(tmp_path / "photo.png")],
            out=str(tmp_path / "out"),
            tile=96,
            overlap=24,
            precision="fp32",
        )
    )  # fp32: compared with the plain model's labels
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


class PixelModel(torch.nn.Module):
    """A model whose logits for one image do not depend on the rest of the batch, bit for bit:
    per-pixel channel mixes plus a 5×5 mean for spatial context (so misplaced or padded tiles show)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
        self.config = refineseg.ModelConfig(name="pixel", num_classes=5)
        self.batch_sizes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(tuple(x.shape))
        mixed = (self.mix[None, :, :, None, None] * x[:, None]).sum(2)  # (n, 5, h, w)
        return mixed + torch.nn.functional.avg_pool2d(mixed, 5, stride=1, padding=2)


def _spans(image, tile, overlap):
    return tile_spans(image.shape[0], tile, overlap), tile_spans(image.shape[1], tile, overlap)


@pytest.mark.parametrize("tile_batch", [2, 3, 5, 16])
def test_batched_tiles_equal_one_tile_at_a_time_exactly(image, tile_batch):
    """With batch-invariant logits, batching changes nothing: each tile's logits and the labels are identical."""
    model = PixelModel()
    rows, cols = _spans(image, 64, 20)  # 3 × 4 tiles: last row 62 px tall, last column 38 px wide
    mean, std = model.config.mean, model.config.std
    single = list(tile_logits(model, image, rows, cols, mean, std, "cpu", tile_batch=1))
    model.batch_sizes.clear()
    batched = list(tile_logits(model, image, rows, cols, mean, std, "cpu", tile_batch=tile_batch))
    assert len(batched) == len(single) == 12
    for k, (a, b) in enumerate(zip(single, batched)):
        (y0, y1), (x0, x1) = rows[k // len(cols)], cols[k % len(cols)]
        assert a.shape == (5, y1 - y0, x1 - x0) and torch.equal(a, b), k
    # Each forward pass stacks tiles of one size from the next tile_batch tiles in raster order, so
    # never more than tile_batch tiles are in flight (the memory bound).
    shapes = [(y1 - y0, x1 - x0) for y0, y1 in rows for x0, x1 in cols]
    expected = []
    for start in range(0, 12, tile_batch):
        chunk = shapes[start : start + tile_batch]
        expected += [(chunk.count(s), 3, *s) for s in dict.fromkeys(chunk)]
    assert sorted(model.batch_sizes) == sorted(expected)
    assert 1 < max(n for n, *_ in model.batch_sizes) <= tile_batch
    assert np.array_equal(
        predict_tiled(model, image, tile=64, overlap=20, progress=False, tile_batch=tile_batch),
        predict_tiled(model, image, tile=64, overlap=20, progress=False),
    )


@pytest.mark.parametrize("tile_batch", [3, 12])
def test_batched_tiles_give_the_labels_of_one_tile_at_a_time(model, image, tile_batch):
    expected = predict_tiled(model, image, tile=64, overlap=20, progress=False)
    got = predict_tiled(model, image, tile=64, overlap=20, progress=False, tile_batch=tile_batch)
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) > 1
    # A real network's convolutions may sum in another order for another batch size: logits agree to rounding.
    rows, cols = _spans(image, 64, 20)
    args = (model, image, rows, cols, model.config.mean, model.config.std, "cpu")
    for a, b in zip(tile_logits(*args, tile_batch=1), tile_logits(*args, tile_batch=tile_batch)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_batched_thin_edge_tiles_are_padded_like_single_ones(model):
    image = np.random.default_rng(3).integers(0, 255, (70, 100, 3), dtype=np.uint8)  # last tiles 14 and 44 px
    expected = predict_tiled(model, image, tile=64, overlap=8, progress=False)
    assert np.array_equal(predict_tiled(model, image, tile=64, overlap=8, progress=False, tile_batch=4), expected)


def test_rejects_bad_tile_batch(model, image):
    from refineseg.cli.predict import PredictConfig

    with pytest.raises(ValueError, match="tile_batch"):
        predict_tiled(model, image, tile=64, overlap=8, tile_batch=0)
    with pytest.raises(ValueError, match="tile_batch"):
        PredictConfig(checkpoint="c", inputs=["x.png"], tile=64, overlap=8, tile_batch=0)


def test_predict_cli_passes_tile_batch(tmp_path, model, image):
    from PIL import Image

    from refineseg.cli.predict import PredictConfig, run_predict

    model.save_pretrained(tmp_path / "ckpt")
    Image.fromarray(image).save(tmp_path / "photo.png")
    calls = []
    original = refineseg.inference.predict.predict_tiled

    def spy(*args, **kwargs):
        calls.append(kwargs["tile_batch"])
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(refineseg.inference.predict, "predict_tiled", spy)
        written = run_predict(
            PredictConfig(
                checkpoint=str(tmp_path / "ckpt"),
                inputs=[str(tmp_path / "photo.png")],
                out=str(tmp_path / "out"),
                tile=64,
                overlap=20,
                tile_batch=4,
                overlay=False,
                optimize=False,
                precision="fp32",
            )
        )
    assert calls == [4]
    expected = predict_tiled(model, image, tile=64, overlap=20, progress=False)
    assert np.array_equal(np.asarray(Image.open(written[0])), expected)


def test_the_carried_strip_is_one_buffer_refilled_in_place(model, image, monkeypatch):
    """Memory: one strip of C × overlap × W float16 is carried from row to row, not one per row."""
    buffers = []

    def recording(*args):
        buffers.append(original(*args))
        return buffers[-1]

    original = tiling._strip_for
    monkeypatch.setattr(tiling, "_strip_for", recording)
    labels = predict_tiled(model, image, tile=64, overlap=20, progress=False)
    rows = len(tile_spans(image.shape[0], 64, 20))
    assert rows >= 3 and len(buffers) == rows - 1  # asked for by every row of tiles but the last
    assert len({id(b) for b in buffers}) == 1
    monkeypatch.undo()
    assert np.array_equal(labels, predict_tiled(model, image, tile=64, overlap=20, progress=False))


def test_preview_reads_a_memory_mapped_image_band_by_band(tmp_path, image):
    import tifffile

    from refineseg.data import read_large_image

    tifffile.imwrite(tmp_path / "big.tif", image)
    mapped = read_large_image(tmp_path / "big.tif")
    assert isinstance(mapped, np.memmap)
    for step in (1, 2, 3, 7):
        small = downsample(mapped, step, band=5)
        assert small.flags.c_contiguous and np.array_equal(small, image[::step, ::step])
    labels = np.random.default_rng(3).integers(0, 5, image.shape[:2], dtype=np.uint8)
    small_image, small_labels = preview(mapped, labels, side=60)  # 170 px wide: every 3rd pixel
    assert np.array_equal(small_image, image[::3, ::3]) and np.array_equal(small_labels, labels[::3, ::3])
    assert small_labels.flags.c_contiguous and max(small_labels.shape) <= 60
    assert preview(image, labels, side=170) == (image, labels)  # fits: the inputs themselves
    assert np.array_equal(np.asarray(mapped), image)  # released pages are read back from the file
    with pytest.raises(ValueError, match="step"):
        downsample(image, 0)


def test_overlay_blends_band_by_band_exactly_like_one_blend():
    from PIL import Image

    from refineseg.report.visualize import OVERLAY_BAND_ROWS, colorize, overlay

    rng = np.random.default_rng(4)
    h = 2 * OVERLAY_BAND_ROWS + 17
    image = rng.integers(0, 255, (h, 40, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (h, 40), dtype=np.uint8)
    labels[:3] = 255  # ignored pixels
    palette = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]
    expected = Image.blend(Image.fromarray(image), Image.fromarray(colorize(labels, palette)), 0.3)
    assert np.array_equal(np.asarray(overlay(image, labels, palette, alpha=0.3, legend=False)), np.asarray(expected))
    with_legend = np.asarray(overlay(image, labels, palette, alpha=0.3))
    assert with_legend.shape[1] > 40 and np.array_equal(with_legend[:h, :40], np.asarray(expected))
