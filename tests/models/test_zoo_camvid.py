"""The shipped CamVid model on the README's example frames: a real trained model against real labels."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

import refineseg
from refineseg.data import CAMVID_CLASSES
from refineseg.models import zoo

EXAMPLES = ROOT / "examples" / "camvid"
NAME = "lw_refinenet_mbv2_camvid"
VOID = 11
#: Pixel accuracy over the labelled pixels of the three frames that the shipped model must reach: it
#: measured 0.851 (0.879, 0.843, 0.830 per frame); the same model with an untrained decoder, 0.074.
MIN_PIXEL_ACCURACY = 0.80


def example_frames() -> list[tuple[np.ndarray, np.ndarray]]:
    frames = sorted(p for p in EXAMPLES.glob("*.png") if not p.stem.endswith("_label"))
    assert len(frames) == 3, frames
    return [
        (np.asarray(Image.open(p).convert("RGB")), np.asarray(Image.open(p.with_name(f"{p.stem}_label.png"))))
        for p in frames
    ]


def test_the_zoo_ships_the_camvid_model_with_its_numbers():
    entry = zoo.get_entry(NAME)
    assert entry.dataset == "camvid" and list(entry.classes) == CAMVID_CLASSES
    assert 0.4 < entry.metrics["mIoU"] <= 1.0
    assert "research" in entry.licence


@pytest.mark.slow
def test_zoo_model_segments_the_example_frames():
    model = refineseg.from_pretrained(NAME).eval()
    correct = labelled = 0
    for image, label in example_frames():
        prediction = refineseg.segment(model, image)
        assert prediction.shape == label.shape and prediction.max() < len(CAMVID_CLASSES)
        scored = label != VOID
        correct += int((prediction[scored] == label[scored]).sum())
        labelled += int(scored.sum())
    assert correct / labelled >= MIN_PIXEL_ACCURACY, correct / labelled
