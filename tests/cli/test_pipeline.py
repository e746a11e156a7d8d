"""End to end through the command line: make-synthetic -> train -> evaluate -> predict, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

import refineseg
from refineseg.training import TrainConfig
from refineseg.utils.config import load_yaml


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_are_valid_train_configs(preset):
    config = TrainConfig(**load_yaml(preset))
    assert config.model in refineseg.list_models()


def test_help_lists_every_command(run_cli):
    out = run_cli("--help").stdout
    for command in ("train", "evaluate", "predict", "make-synthetic", "models", "demo"):
        assert command in out
    assert "--batch-size" in run_cli("train", "--help").stdout


@pytest.mark.slow
def test_make_synthetic_train_evaluate_predict(tmp_path, run_cli):
    data = tmp_path / "synth"
    run_cli("make-synthetic", str(data), "--num-train", "8", "--num-val", "2", "--size", "64")
    assert len(list((data / "images").glob("*.png"))) == 10

    run = tmp_path / "run"
    run_cli(
        "train",
        "--model",
        "lw_refinenet_mbv2",
        "--dataset",
        "folder",
        "--data-root",
        str(data),
        "--out",
        str(run),
        "--iters",
        "3",
        "--batch-size",
        "2",
        "--crop",
        "64",
        "--lr",
        "0.001",
        "--seed",
        "0",
        "--workers",
        "0",
        "--val-interval",
        "3",
        "--ckpt-interval",
        "3",
        "--log-interval",
        "1",
    )
    for name in (
        "last/model.safetensors",
        "last/config.json",
        "last/training_state.pt",
        "best/model.safetensors",
        "metrics.jsonl",
        "plots/loss.png",
        "plots/lr.png",
        "plots/miou.png",
        "config.yaml",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3]
    model = refineseg.from_pretrained(run / "best")
    assert model.num_classes == 6 and model.config.class_names[0] == "background"

    run_cli(
        "evaluate",
        "--checkpoint",
        str(run / "best"),
        "--dataset",
        "folder",
        "--data-root",
        str(data),
        "--split",
        "val",
        "--out",
        str(tmp_path / "eval"),
        "--mode",
        "slide",
        "--crop",
        "48",
        "--stride",
        "32",
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"aAcc", "mAcc", "mIoU", "mDice", "per_class"}
    assert len(metrics["per_class"]) == 6 and all(0 <= metrics[k] <= 1 for k in ("aAcc", "mAcc", "mIoU", "mDice"))

    run_cli(
        "predict",
        "--checkpoint",
        str(run / "best"),
        "--out",
        str(tmp_path / "pred"),
        str(data / "images" / "val_*.png"),
    )
    labels = sorted((tmp_path / "pred").glob("val_*[0-9].png"))
    assert len(labels) == 2
    label = Image.open(labels[0])
    assert label.mode == "P" and label.size == (64, 64) and np.asarray(label).max() < 6
    assert (tmp_path / "pred" / (labels[0].stem + "_overlay.png")).is_file()
