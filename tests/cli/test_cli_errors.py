"""Bad input through the command line: one line on stderr naming the file, exit 2, no traceback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refineseg.data import write_synthetic

TRAIN = [
    "train",
    "--model",
    "lw_refinenet_mbv2",
    "--iters",
    "1",
    "--batch-size",
    "1",
    "--crop",
    "64",
    "--val-interval",
    "0",
    "--log-interval",
    "1",
]


@pytest.fixture
def fails(run_cli) -> Callable[..., str]:
    """``fails(*args)`` runs the CLI, expects exit 2 and a single ``error:`` line, and returns that line."""

    def run(*args: str) -> str:
        proc = run_cli(*args, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train:")]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        return lines[0]

    return run


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_synthetic(root, num_train=2, num_val=1, size=64)
    return root


def folder_train(root: Path, out: Path, workers: str = "0") -> list[str]:
    # --skip-data-check: these tests are about the readers' own errors (the check is in test_data_check.py)
    return [
        *TRAIN,
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--workers",
        workers,
        "--skip-data-check",
    ]


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the error travels back from a DataLoader worker
def test_mask_and_image_size_mismatch(dataset, tmp_path, workers, fails):
    for mask in (dataset / "masks").glob("train_*.png"):
        Image.open(mask).resize((50, 64), Image.NEAREST).save(mask)
    line = fails(*folder_train(dataset, tmp_path / "run", workers))
    assert "masks/train_0000" in line and "50x64" in line


def test_labels_outside_the_classes(dataset, tmp_path, fails):
    for mask in (dataset / "masks").glob("train_*.png"):
        Image.fromarray(np.full((64, 64), 9, np.uint8)).save(mask)
    line = fails(*folder_train(dataset, tmp_path / "run"))
    assert "masks/train_0000" in line and "9" in line


def test_truncated_training_image(dataset, tmp_path, fails):
    for image in (dataset / "images").glob("train_*.png"):
        image.write_bytes(image.read_bytes()[:200])
    assert "images/train_0000" in fails(*folder_train(dataset, tmp_path / "run"))


def test_non_image_file(tmp_path, fails):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    ckpt = tmp_path / "ckpt"
    import refineseg

    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(ckpt)
    # --fail-fast: exit 2 with the reader's one line (without it the input is skipped and listed, exit 3)
    assert "notes.png" in fails(
        "predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--fail-fast", str(fake)
    )


def test_empty_dataset_folder(tmp_path, fails):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.yaml").write_text("- {name: a, color: [0, 0, 0]}\n- {name: b, color: [255, 0, 0]}\n")
    assert str(root) in fails(*folder_train(root, tmp_path / "run"))


def test_missing_split_file(tmp_path, fails):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    line = fails(*TRAIN, "--dataset", "voc", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"))
    assert "train.txt" in line


def test_checkpoint_with_other_classes(dataset, tmp_path, fails):
    import refineseg

    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(tmp_path / "ckpt")
    line = fails(
        "evaluate",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--dataset",
        "folder",
        "--data-root",
        str(dataset),
        "--split",
        "val",
        "--out",
        str(tmp_path / "eval"),
    )
    assert "ckpt" in line and "3" in line and "6" in line


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_file_carrying_code_is_refused_and_never_run(tmp_path, fails):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": _RunsCode(str(marker))}, f)
    line = fails(
        *TRAIN,
        "--dataset",
        "synthetic",
        "--synthetic-train",
        "2",
        "--synthetic-val",
        "1",
        "--synthetic-size",
        "64",
        "--out",
        str(tmp_path / "run"),
        "--backbone-weights",
        str(evil),
    )
    assert "evil.pth" in line and "unpickle" in line
    assert not marker.exists()


def test_missing_config_file(tmp_path, fails):
    assert "nope.yaml" in fails("train", "--config", str(tmp_path / "nope.yaml"))


# --- flags: no prefix matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--batch", "4"], "--batch"),  # abbreviation of --batch-size
        (["train", "--batch-sise", "4"], "--batch-sise"),  # unknown
        (["evaluate", "--checkpoint", "ckpt", "--synthetic-s", "64"], "--synthetic-s"),  # of --synthetic-size
        (["evaluate", "--checkpoint", "ckpt", "--crop-s", "300"], "--crop-s"),  # unknown
    ],
)
def test_abbreviated_or_unknown_flag_is_an_error(argv, flag, capsys):
    from refineseg.cli.app import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"unrecognized arguments: {flag}" in err


# --- optional extras: imported lazily, reported as one line; our own import bugs keep their traceback ----


def test_importing_the_cli_loads_no_optional_extra():
    extras = ["onnxruntime", "onnx", "onnxscript", "matplotlib", "albumentations", "cv2", "tifffile"]
    code = f"import sys, refineseg.cli.app; print([m for m in {extras!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def _fail_with(monkeypatch, error: Exception) -> None:
    """Make ``refineseg models`` raise ``error``."""
    import refineseg.cli.models

    def handler(args) -> None:
        raise error

    monkeypatch.setattr(refineseg.cli.models, "run_models", handler)


def test_import_error_in_our_code_is_not_hidden(monkeypatch):
    from refineseg.cli.app import main

    _fail_with(monkeypatch, ImportError("cannot import name 'nope' from 'refineseg.models'"))
    with pytest.raises(ImportError, match="nope"):
        main(["models"])


def test_missing_optional_extra_is_one_line(monkeypatch, capsys):
    from refineseg.cli.app import main
    from refineseg.errors import MissingDependencyError

    _fail_with(monkeypatch, MissingDependencyError("plots need matplotlib: pip install 'refineseg[train]'"))
    assert main(["models"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: plots need matplotlib: pip install 'refineseg[train]'"]


def _block(monkeypatch, *modules: str) -> None:
    """Make ``import <module>`` (and its submodules) fail as if it were not installed."""
    for name in [m for m in sys.modules if m.split(".")[0] in modules] + list(modules):
        monkeypatch.setitem(sys.modules, name, None)


def _plot(tmp_path: Path) -> None:
    from refineseg.report.visualize import plot_curves

    plot_curves([{"iter": 1, "loss": 0.5}], tmp_path)


def _augment(tmp_path: Path) -> None:
    from refineseg.data.transforms import _albumentations

    _albumentations()


def _write_tiff(tmp_path: Path) -> None:
    from refineseg.data import write_label_tiff

    write_label_tiff(tmp_path / "labels.tif", np.zeros((8, 8), np.uint8), [(0, 0, 0)])


def _onnx(tmp_path: Path) -> None:
    from refineseg.inference.export import OnnxSegmenter

    OnnxSegmenter(tmp_path / "model.onnx")


@pytest.mark.parametrize(
    "module, use",
    [("matplotlib", _plot), ("albumentations", _augment), ("tifffile", _write_tiff), ("onnxruntime", _onnx)],
)
def test_missing_extra_raises_missing_dependency_error(module, use, monkeypatch, tmp_path):
    from refineseg.errors import MissingDependencyError

    _block(monkeypatch, module)
    with pytest.raises(MissingDependencyError, match=rf"{module}.*pip install 'refineseg\["):
        use(tmp_path)


def test_evaluate_without_matplotlib_skips_the_confusion_plot(dataset, tmp_path, monkeypatch, capsys):
    import refineseg
    from refineseg.cli.app import main

    refineseg.create_model("lw_refinenet_mbv2", num_classes=6).save_pretrained(tmp_path / "ckpt")
    _block(monkeypatch, "matplotlib")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--dataset",
                "folder",
                "--data-root",
                str(dataset),
                "--split",
                "val",
                "--out",
                str(tmp_path / "eval"),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert "Skipped confusion_matrix.png: plots need matplotlib" in capsys.readouterr().out
    assert (tmp_path / "eval" / "metrics.json").exists()


# --- predict --backend onnxruntime -----------------------------------------------------------------


def _predict_onnx(checkpoint: Path, tmp_path: Path, capsys) -> str:
    """Run ``refineseg predict --backend onnxruntime`` in-process; expect exit 2, return the one stderr line."""
    pytest.importorskip("onnxruntime")
    from refineseg.cli.app import main

    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    code = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--backend",
            "onnxruntime",
            "--out",
            str(tmp_path / "pred"),
            str(image),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_onnx_backend_given_a_checkpoint_directory(tmp_path, capsys):
    import refineseg

    ckpt = tmp_path / "ckpt"
    refineseg.create_model("lw_refinenet_mbv2", num_classes=3).save_pretrained(ckpt)
    line = _predict_onnx(ckpt, tmp_path, capsys)
    assert line.startswith(f"error: {ckpt}: is a checkpoint directory")
    assert ".onnx" in line and f"refineseg export --checkpoint {ckpt}" in line and "no such file" not in line


def test_onnx_backend_given_a_missing_file(tmp_path, capsys):
    assert _predict_onnx(tmp_path / "nope.onnx", tmp_path, capsys) == f"error: {tmp_path / 'nope.onnx'}: no such file"
