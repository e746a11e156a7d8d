"""The model zoo: entries built from a small model in a temporary zoo folder, loaded by name, hash-checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from helpers import ROOT, make_model, saved_weights
from PIL import Image

import refineseg
from refineseg.cli.app import main
from refineseg.cli.evaluate import EvalConfig, run_evaluate
from refineseg.data.synthetic import SYNTHETIC_CLASSES
from refineseg.errors import CheckpointError, RefineSegError
from refineseg.models import zoo
from refineseg.models.hub import sha256_file
from refineseg.training.setup import init_from_checkpoint

NAME = "lw_refinenet_mbv2_synthetic"
LICENCE = "synthetic data: no restriction"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(checkpoint, metrics.json, recipe)``: a small model for the synthetic classes, evaluated for real."""
    root = tmp_path_factory.mktemp("trained")
    checkpoint = root / "best"
    make_model(class_names=SYNTHETIC_CLASSES, palette=None, warm_batch_norm=True).save_pretrained(checkpoint)
    run_evaluate(
        EvalConfig(
            checkpoint=str(checkpoint),
            dataset="synthetic",
            synthetic_val=3,
            synthetic_size=64,
            out=str(root / "eval"),
            confusion_png=False,
            device="cpu",
        )
    )
    recipe = root / f"{NAME}.yaml"
    recipe.write_text("model: lw_refinenet_mbv2\ndataset: synthetic\niters: 10\n")
    return checkpoint, root / "eval" / "metrics.json", recipe


@pytest.fixture
def zoo_root(tmp_path, monkeypatch) -> Path:
    """An empty zoo folder in place of the package's."""
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    return tmp_path / "zoo"


def add(trained, fp16_shift: float | None = 0.0, replace: bool = False, **options) -> zoo.ZooEntry:
    """Add the trained model; ``fp16_shift``: the float16 mIoU minus the float32 one, in points (None: unmeasured)."""
    checkpoint, metrics_path, recipe = trained
    metrics = json.loads(metrics_path.read_text())
    fp16 = None if fp16_shift is None else {**metrics, "mIoU": metrics["mIoU"] + fp16_shift / 100}
    source = zoo.EntrySource(
        checkpoint=checkpoint,
        metrics=metrics,
        recipe_file=recipe,
        fp16_metrics=fp16,
        commit="abc123",
        licence=LICENCE,
        **options,
    )
    return zoo.add_entry(source, replace=replace)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_added_entry_is_listed_with_its_data(trained, zoo_root):
    entry = add(trained, fp16_shift=0.05)
    checkpoint, metrics_path, _ = trained
    metrics = json.loads(metrics_path.read_text())
    assert zoo.list_zoo() == [entry] and zoo.zoo_names() == [NAME]
    assert zoo.load_index() == {NAME: entry}  # the index file round-trips
    assert json.loads((zoo_root / "index.json").read_text())["entries"][0]["name"] == NAME
    assert (entry.model, entry.dataset, entry.classes) == ("lw_refinenet_mbv2", "synthetic", SYNTHETIC_CLASSES)
    assert (entry.commit, entry.licence, entry.file) == ("abc123", LICENCE, f"{NAME}/model.safetensors")
    assert entry.recipe == {"model": "lw_refinenet_mbv2", "dataset": "synthetic", "iters": 10}
    assert entry.sha256 == sha256_file(zoo_root / entry.file)
    assert entry.config_sha256 == sha256_file(zoo_root / NAME / "config.json")
    assert entry.precision == "float16"
    assert entry.metrics["mIoU"] == pytest.approx(metrics["mIoU"] + 0.0005)  # the shipped (float16) numbers
    assert entry.metrics[f"IoU/{SYNTHETIC_CLASSES[0]}"] == metrics["per_class"][0]["IoU"]
    assert entry.evaluation["split"] == "val" and entry.evaluation["fp32_mIoU"] == metrics["mIoU"]
    stored = saved_weights(zoo_root / NAME)
    assert stored["encoder.features.0.0.weight"].dtype == torch.float16
    assert stored["encoder.features.0.1.running_var"].dtype == torch.float32  # BN statistics stay float32


@pytest.mark.parametrize(
    ("shift", "expected"),
    [(0.0, "float16"), (-0.09, "float16"), (0.1, "float32"), (-0.3, "float32"), (None, "float32")],
)
def test_float16_only_when_miou_moves_by_less_than_a_tenth_of_a_point(shift, expected):
    fp32 = {"mIoU": 0.6123}
    fp16 = None if shift is None else {"mIoU": 0.6123 + shift / 100}
    assert zoo.choose_precision(fp32, fp16) == expected


def test_loading_by_name_equals_loading_the_folder(trained, zoo_root):
    entry = add(trained, fp16_shift=None)
    assert entry.precision == "float32"
    by_name = refineseg.from_pretrained(NAME)
    assert_same_state(by_name.state_dict(), refineseg.from_pretrained(zoo_root / NAME).state_dict())
    assert_same_state(by_name.state_dict(), refineseg.from_pretrained(trained[0]).state_dict())  # float32: exact
    assert not by_name.training and by_name.config.class_names == SYNTHETIC_CLASSES
    fresh = make_model(class_names=SYNTHETIC_CLASSES, palette=None, seed=1)
    init_from_checkpoint(fresh, NAME)  # train --init-from NAME
    assert_same_state(fresh.state_dict(), by_name.state_dict())


def test_float16_entry_loads_as_float32_close_to_the_original(trained, zoo_root):
    add(trained, fp16_shift=0.0)
    model, original = refineseg.from_pretrained(NAME), refineseg.from_pretrained(trained[0])
    assert_same_state(model.state_dict(), refineseg.from_pretrained(zoo_root / NAME).state_dict())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=0.05, rtol=0.01)


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_a_corrupted_file_is_refused_naming_it_and_both_hashes(trained, zoo_root, file, capsys):
    entry = add(trained)
    path = zoo_root / NAME / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = entry.sha256 if file == "model.safetensors" else entry.config_sha256
    with pytest.raises(CheckpointError) as info:
        refineseg.from_pretrained(NAME)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: SHA-256 mismatch")
    assert expected in message and sha256_file(path) in message
    assert main(["zoo", NAME]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_missing_zoo_file_is_a_one_line_error(trained, zoo_root):
    add(trained)
    (zoo_root / NAME / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: not found .*lw_refinenet_mbv2_synthetic"):
        refineseg.from_pretrained(NAME)


def test_unknown_name_lists_the_zoo(trained, zoo_root, capsys):
    with pytest.raises(CheckpointError, match="nope: not found .*the model zoo is empty"):
        refineseg.from_pretrained("nope")
    add(trained)
    with pytest.raises(CheckpointError, match=f"nope: not found .*model-zoo name; model-zoo names: {NAME}\\)$"):
        refineseg.from_pretrained("nope")
    assert main(["zoo", "nope"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: nope: not a model-zoo name; model-zoo names: {NAME} "
        "(see `refineseg zoo`)"
    )


def test_a_folder_of_that_name_wins(trained, zoo_root, tmp_path, monkeypatch):
    add(trained)
    other = make_model(class_names=["a", "b"], palette=None)
    monkeypatch.chdir(tmp_path)
    other.save_pretrained(tmp_path / NAME)
    assert refineseg.from_pretrained(NAME).config.class_names == ["a", "b"]


def test_cli_zoo_lists_entries_with_their_numbers(trained, zoo_root, capsys):
    assert main(["zoo"]) == 0
    assert "model zoo is empty" in capsys.readouterr().out
    entry = add(trained, fp16_shift=0.0)
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    header, rule, row = out.splitlines()[:3]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == [
        "name",
        "model",
        "dataset",
        "classes",
        "split",
        "mIoU",
        "aAcc",
        "mAcc",
        "mBoundaryIoU",
        "precision",
        "MB",
        "licence",
    ]
    assert row.startswith(f"| {NAME} | lw_refinenet_mbv2 | synthetic |")
    assert f" {100 * entry.metrics['mIoU']:.2f} |" in row and " float16 " in row and LICENCE in row
    assert main(["zoo", NAME]) == 0
    out = capsys.readouterr().out
    assert f'"sha256": "{entry.sha256}"' in out and f"{NAME}: {zoo_root / NAME} (SHA-256 verified)" in out


@pytest.mark.slow
def test_predict_and_evaluate_take_a_zoo_name(trained, zoo_root, tmp_path):
    add(trained, fp16_shift=None)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(image)
    for source, out in ((NAME, "by_name"), (str(trained[0]), "by_folder")):
        assert (
            main(
                [
                    "predict",
                    str(image),
                    "--checkpoint",
                    source,
                    "--out",
                    str(tmp_path / out),
                    "--no-overlay",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    assert (tmp_path / "by_name" / "photo.png").read_bytes() == (tmp_path / "by_folder" / "photo.png").read_bytes()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                NAME,
                "--dataset",
                "synthetic",
                "--synthetic-val",
                "2",
                "--synthetic-size",
                "64",
                "--out",
                str(tmp_path / "eval"),
                "--no-confusion-png",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == NAME


def test_adding_is_refused_over_the_size_budget_or_an_existing_name(trained, zoo_root, monkeypatch):
    add(trained)
    with pytest.raises(RefineSegError, match="already in the model zoo"):
        add(trained)
    add(trained, replace=True)
    monkeypatch.setattr(zoo, "MAX_ZOO_BYTES", 10_000)
    with pytest.raises(RefineSegError, match="over its 0.01 MB budget"):
        add(trained, name="second")
    assert zoo.zoo_names() == [NAME] and sorted(p.name for p in zoo_root.iterdir()) == ["index.json", NAME]
    with pytest.raises(RefineSegError, match="no licence note known for dataset 'synthetic'"):
        zoo.add_entry(zoo.EntrySource(trained[0], json.loads(trained[1].read_text()), trained[2], name="third"))


def test_a_bad_index_names_the_file(zoo_root):
    zoo_root.mkdir()
    (zoo_root / "index.json").write_text('{"entries": [{"name": "x", "file": "x/model.safetensors"}]}')
    with pytest.raises(CheckpointError, match=f"{zoo_root / 'index.json'}: zoo entry x: bad fields \\(missing "):
        zoo.list_zoo()


def load_zoo_add():
    spec = importlib.util.spec_from_file_location("zoo_add", ROOT / "benchmarks" / "zoo_add.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_zoo_add_script_evaluates_float16_and_writes_the_entry(trained, tmp_path, capsys):
    checkpoint, metrics_path, recipe = trained
    zoo_add, root = load_zoo_add(), tmp_path / "zoo"
    args = [
        str(checkpoint),
        "--metrics",
        str(metrics_path),
        "--recipe",
        str(recipe),
        "--zoo-dir",
        str(root),
        "--licence",
        LICENCE,
        "--commit",
        "deadbeef",
    ]
    assert zoo_add.main(args) == 0
    entry = zoo.load_index(root)[NAME]
    fp32 = json.loads(metrics_path.read_text())
    fp16 = {"mIoU": entry.evaluation["fp16_mIoU"]}
    assert entry.precision == zoo.choose_precision(fp32, fp16) and entry.commit == "deadbeef"
    assert entry.sha256 == sha256_file(root / entry.file)
    assert f"{NAME}: {entry.precision} weights (val mIoU float32 {100 * fp32['mIoU']:.2f}" in capsys.readouterr().out
    assert zoo_add.main(args) == 2
    assert "already in the model zoo" in capsys.readouterr().err
    assert zoo_add.main([*args, "--replace", "--keep-fp32"]) == 0
    replaced = zoo.load_index(root)[NAME]
    assert replaced.precision == "float32" and "fp16_mIoU" not in replaced.evaluation
    assert_same_state(
        refineseg.from_pretrained(root / NAME).state_dict(), refineseg.from_pretrained(checkpoint).state_dict()
    )


def test_the_package_ships_a_valid_index_and_declares_the_zoo_files():
    assert isinstance(zoo.load_index(zoo.ZOO_DIR), dict)  # the packaged index parses (it may be empty)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["refineseg.models"]
    assert {"zoo_weights/index.json", "zoo_weights/*/model.safetensors", "zoo_weights/*/config.json"} <= set(patterns)
    for entry in zoo.load_index(zoo.ZOO_DIR).values():  # real entries: within budget and intact
        zoo.verify_entry(entry)
    assert zoo.zoo_bytes(zoo.load_index(zoo.ZOO_DIR), zoo.ZOO_DIR) <= zoo.MAX_ZOO_BYTES
