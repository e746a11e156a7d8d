"""Tests for the built-in synthetic dataset: determinism, content properties, folder round trip."""

from __future__ import annotations

import numpy as np
import yaml
from numpy.lib.stride_tricks import sliding_window_view

from refineseg.data import (
    SYNTHETIC_CLASSES,
    FolderDataset,
    SyntheticSegmentation,
    make_synthetic_sample,
    write_synthetic,
)
from refineseg.data.synthetic import DISK, DOT, SQUARE, STRIPES, WIRE


def erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion with a k x k square (True where the whole window is inside ``mask``)."""
    return sliding_window_view(mask, (k, k)).all(axis=(-1, -2))


def test_deterministic_and_order_independent():
    a = SyntheticSegmentation("train", 8, seed=0)
    b = SyntheticSegmentation("train", 8, seed=0)
    late = [b[i] for i in reversed(range(8))][::-1]
    for i in range(8):
        image, mask = a[i]
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
        assert np.array_equal(image, late[i][0]) and np.array_equal(mask, late[i][1])
    val = SyntheticSegmentation("val", 8, seed=0)
    other = SyntheticSegmentation("train", 8, seed=1)
    for i in range(8):
        assert not np.array_equal(a[i][1], val[i][1])
        assert not np.array_equal(a[i][1], other[i][1])
    assert not np.array_equal(a[0][1], a[1][1])
    assert len(SyntheticSegmentation("train")) == 500 and len(SyntheticSegmentation("val")) == 100
    assert SyntheticSegmentation("val", 2, size=(64, 96))[1][0].shape == (64, 96, 3)


def test_classes_thin_wires_and_small_dots():
    ds = SyntheticSegmentation("train", 12, seed=0)
    assert ds.num_classes == len(SYNTHETIC_CLASSES) >= 5 and len(set(ds.palette)) == ds.num_classes
    counts = np.zeros(ds.num_classes, np.int64)
    wire_pixels = wire_kept = 0
    for i in range(len(ds)):
        image, mask = ds[i]
        ds.check_sample(image, mask)
        counts += np.bincount(mask.ravel(), minlength=ds.num_classes)
        wire = mask == WIRE
        wire_pixels += wire.sum()
        wire_kept += erode(wire, 4).sum()  # a 4x4 square fits nowhere in a <= 3 px wide line ...
        assert erode(mask == DOT, 13).sum() == 0  # ... and dots are small (radius <= 6)
    assert (counts > 0).all()
    assert wire_kept <= 0.02 * wire_pixels  # ... except where two wires cross
    assert 0.01 < counts[WIRE] / counts.sum() < 0.1
    # At least one wire is exactly 1 px thick somewhere: pixels whose vertical neighbours aren't wire.
    image, mask = ds[0]
    wire = mask == WIRE
    assert (wire[1:-1, 1:-1] & ~wire[:-2, 1:-1] & ~wire[2:, 1:-1]).any() or (
        wire[1:-1, 1:-1] & ~wire[1:-1, :-2] & ~wire[1:-1, 2:]
    ).any()


def test_square_and_stripes_share_mean_colour_but_not_texture():
    ds = SyntheticSegmentation("val", 16, seed=3)
    checked = 0
    for i in range(len(ds)):
        image, mask = ds[i]
        inner_square = erode(mask == SQUARE, 5)
        inner_stripes = erode(mask == STRIPES, 5)
        if inner_square.sum() < 100 or inner_stripes.sum() < 300:
            continue
        crop = image[2:-2, 2:-2].astype(np.float64)
        sq, st = crop[inner_square], crop[inner_stripes]
        assert np.abs(sq.mean(0) - st.mean(0)).max() < 10  # same mean colour (stripes are +-45)
        assert st.std(0).min() > 30 > 8 > sq.std(0).max()  # only texture tells them apart
        checked += 1
        other = crop[erode(mask == DISK, 5)]
        if len(other):
            assert np.abs(other.mean(0) - sq.mean(0)).max() > 60  # other classes differ in colour
    assert checked >= 3


def test_write_synthetic_roundtrip(tmp_path):
    out = write_synthetic(tmp_path / "syn", num_train=4, num_val=2, size=(48, 64), seed=7)
    classes = yaml.safe_load((tmp_path / "syn" / "classes.yaml").read_text())
    assert [c["name"] for c in classes] == SYNTHETIC_CLASSES
    assert (tmp_path / "syn" / "splits" / "val.txt").read_text().split() == ["val_00000", "val_00001"]
    for split, n in (("train", 4), ("val", 2)):
        folder = FolderDataset(out, split=split)
        assert len(folder) == n and folder.class_names == SYNTHETIC_CLASSES
        for i in range(n):
            image, mask = folder[i]
            ref_image, ref_mask = make_synthetic_sample(7, split, i, (48, 64))
            assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
