"""Bad input through the command line: one line on stderr naming the file, exit 2, no traceback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refineseg.data import write_synthetic

TRAIN = ["train", "--model", "lw_refinenet_mbv2", "--iters", "1", "--batch-size", "1", "--crop", "64",
         "--val-interval", "0", "--log-interval", "1"]


def fails(*args: str) -> str:
    """Run the CLI, expect exit 2 and a single ``error:`` line; return that line."""
    proc = subprocess.run([sys.executable, "-m", "refineseg", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_synthetic(root, num_train=2, num_val=1, size=64)
    return root


def folder_train(root: Path, out: Path, workers: str = "0") -> list[str]:
    return [*TRAIN, "--dataset", "folder", "--data-root", str(root), "--out", str(out), "--workers", workers]


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the error travels back from a DataLoader worker
def test_mask_and_image_size_mismatch(dataset, tmp_path, workers):
    for mask in (dataset / "masks").glob("train_*.png"):
        Image.open(mask).resize((50, 64), Image.NEAREST).save(mask)
    line = fails(*folder_train(dataset, tmp_path / "run", workers))
    assert "masks/train_0000" in line and "50x64" in line


def test_labels_outside_the_classes(dataset, tmp_path):
    for mask in (dataset / "masks").glob("train_*.png"):
        Image.fromarray(np.full((64, 64), 9, np.uint8)).save(mask)
    line = fails(*folder_train(dataset, tmp_path / "run"))
    assert "masks/train_0000" in line and "9" in line


def test_truncated_training_image(dataset, tmp_path):
    for image in (dataset / "images").glob("train_*.png"):
        image.write_bytes(image.read_bytes()[:200])
    assert "images/train_0000" in fails(*folder_train(dataset, tmp_path / "run"))


def test_non_image_file(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    ckpt = tmp_path / "ckpt"
    import refineseg
    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(ckpt)
    assert "notes.png" in fails("predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), str(fake))


def test_empty_dataset_folder(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.yaml").write_text("- {name: a, color: [0, 0, 0]}\n- {name: b, color: [255, 0, 0]}\n")
    assert str(root) in fails(*folder_train(root, tmp_path / "run"))


def test_missing_split_file(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    line = fails(*TRAIN, "--dataset", "voc", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"))
    assert "train.txt" in line


def test_checkpoint_with_other_classes(dataset, tmp_path):
    import refineseg
    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(tmp_path / "ckpt")
    line = fails("evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--dataset", "folder", "--data-root",
                 str(dataset), "--split", "val", "--out", str(tmp_path / "eval"))
    assert "ckpt" in line and "3" in line and "6" in line


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_file_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": _RunsCode(str(marker))}, f)
    line = fails(*TRAIN, "--dataset", "synthetic", "--synthetic-train", "2", "--synthetic-val", "1",
                 "--synthetic-size", "64", "--out", str(tmp_path / "run"), "--backbone-weights", str(evil))
    assert "evil.pth" in line and "unpickle" in line
    assert not marker.exists()


def test_missing_config_file(tmp_path):
    assert "nope.yaml" in fails("train", "--config", str(tmp_path / "nope.yaml"))
