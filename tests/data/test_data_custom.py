"""Custom folder data without surprises: binary 0/255 masks, label maps, one-class lists, clear errors."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT
from PIL import Image

from refineseg.cli.evaluate import EvalConfig
from refineseg.data import FolderDataset, build_dataset
from refineseg.data.check import DataCheckError, check_dataset
from refineseg.data.check_cache import fingerprint
from refineseg.data.folder import load_class_spec, parse_class_spec
from refineseg.errors import DataError
from refineseg.training.config import TrainConfig

RNG = np.random.default_rng(7)
H, W = 6, 8


def make_folder(root: Path, masks: dict[str, np.ndarray], classes=None, mode: str = "L") -> Path:
    """images/<stem>.png (random RGB), masks/<stem>.png (``mode`` L or RGB), classes.yaml if given."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for stem, mask in masks.items():
        Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        data = np.repeat(mask[:, :, None], 3, axis=2) if mode == "RGB" else mask
        Image.fromarray(data.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    if classes is not None:
        (root / "classes.yaml").write_text(classes if isinstance(classes, str) else yaml.safe_dump(classes))
    return root


@contextlib.contextmanager
def one_line_error(path, *fragments: str):
    """pytest.raises(DataError) whose message is one line starting with ``<path>: `` and holding ``fragments``."""
    with pytest.raises(DataError) as info:
        yield info
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def binary_mask() -> np.ndarray:
    """A 0/255 mask with the grey values JPEG or anti-aliasing leave near 0 and 255."""
    mask = np.where(RNG.random((H, W)) < 0.5, 255, 0).astype(np.uint8)
    mask[0, :4] = [3, 120, 130, 250]
    return mask


def expected_binary(raw: np.ndarray) -> np.ndarray:
    """Foreground where the value is 1 or at least 128, as docs/custom_data.md states."""
    return ((raw == 1) | (raw >= 128)).astype(np.uint8)


# ------------------------------------------------------------------------------ binary masks
@pytest.mark.parametrize("how", ["flag", "classes.yaml", "one-class"])
def test_binary_masks_become_background_and_foreground(tmp_path, how):
    raws = {"a": binary_mask(), "b": binary_mask(), "c": np.zeros((H, W), np.uint8)}
    raws["c"][2, 3] = 1  # a 0/1 mask reads the same way
    classes = {
        "flag": None,
        "classes.yaml": {"binary": True},
        "one-class": {"classes": [{"name": "crack", "color": [255, 255, 255]}], "binary": True},
    }[how]
    make_folder(tmp_path, raws, classes)
    ds = FolderDataset(tmp_path, binary_masks=how == "flag")
    assert ds.class_names == ["background", "crack" if how == "one-class" else "foreground"]
    for i, stem in enumerate(sorted(raws)):
        _, mask = ds[i]
        assert mask.dtype == np.uint8 and np.array_equal(mask, expected_binary(raws[stem])), stem


def test_binary_grey_masks_saved_as_rgb(tmp_path):
    raw = binary_mask()
    make_folder(tmp_path, {"a": raw}, mode="RGB")
    assert np.array_equal(build_dataset("folder", tmp_path, None, binary_masks=True)[0][1], expected_binary(raw))


def test_binary_with_map_override_and_three_classes_refused(tmp_path):
    raw = binary_mask()
    raw[1, :] = 128  # e.g. a grey band around objects meant as "don't care"
    make_folder(tmp_path, {"a": raw}, {"classes": ["bg", "leaf"], "binary": True, "map": {128: "ignore"}})
    expected = expected_binary(raw)
    expected[raw == 128] = 255
    assert np.array_equal(FolderDataset(tmp_path)[0][1], expected)

    (tmp_path / "classes.yaml").write_text("- bg\n- leaf\n- stem\n")
    with one_line_error(tmp_path / "classes.yaml", "binary masks give 2 classes", "3 are listed"):
        FolderDataset(tmp_path, binary_masks=True)


def test_zero_255_mask_without_binary_mode_says_what_to_do(tmp_path):
    raw = np.where(RNG.random((H, W)) < 0.5, 255, 0).astype(np.uint8)
    make_folder(tmp_path, {"a": raw}, ["background", "object"])
    ds = FolderDataset(tmp_path)
    with one_line_error(
        tmp_path / "masks" / "a.png", "only 0 and 255", "--binary-masks", "binary: true", "map: {255: ignore}"
    ):
        ds[0]
    # The data check before training reports it too (every bad mask at once).
    with pytest.raises(DataCheckError, match="--binary-masks"):
        check_dataset(ds, workers=0, cache=False)
    # Saying that 255 really is "ignore" accepts the mask as it is.
    make_folder(tmp_path, {}, {"classes": ["background", "object"], "map": {255: "ignore"}})
    assert np.array_equal(FolderDataset(tmp_path)[0][1], raw)


# ------------------------------------------------------------------------------ label maps
def test_map_remaps_listed_values_and_keeps_the_rest(tmp_path):
    raw = RNG.choice(np.array([0, 7, 8, 9, 255], np.uint8), size=(H, W))
    raw[0, :5] = [0, 7, 8, 9, 255]
    make_folder(tmp_path, {"a": raw}, {"classes": ["bg", "car", "bus"], "map": {7: 1, 8: 2, 9: "ignore"}})
    expected = raw.copy()
    for old, new in ((7, 1), (8, 2), (9, 255)):
        expected[raw == old] = new
    ds = FolderDataset(tmp_path)
    assert np.array_equal(ds[0][1], expected)

    # JSON keys are strings; they map the same way.
    (tmp_path / "classes.yaml").unlink()
    (tmp_path / "classes.json").write_text('{"classes": ["bg", "car", "bus"], "map": {"7": 1, "8": 2, "9": 255}}')
    assert np.array_equal(FolderDataset(tmp_path)[0][1], expected)
    assert fingerprint(FolderDataset(tmp_path)) != fingerprint(FolderDataset(tmp_path, classes=["bg", "car", "bus"]))


def test_unmapped_labels_out_of_range_say_how_to_fix(tmp_path):
    raw = np.zeros((H, W), np.uint8)
    raw[1, 1], raw[2, 2], raw[3, 3] = 1, 7, 8
    make_folder(tmp_path, {"a": raw}, {"classes": ["bg", "car", "bus"], "map": {9: 2}})
    with one_line_error(
        tmp_path / "masks" / "a.png",
        "label values 7, 8 are out of range: 3 classes (0..2)",
        str(tmp_path / "classes.yaml"),
        "`map:`",
        "--binary-masks",
    ):
        FolderDataset(tmp_path)[0]
    with pytest.raises(DataCheckError, match=r"label values 7, 8 are out of range.*`map:`"):
        check_dataset(FolderDataset(tmp_path), workers=0, cache=False)  # the check before training says it too


# ------------------------------------------------------------------------------ classes file errors
@pytest.mark.parametrize(
    "text,fragment",
    [
        ("classes: [bg, car]\nmap: {7: 5}\n", "map: 7 -> 5 must be a class index 0..1"),
        ("classes: [bg, car]\nmap: {300: 1}\n", "map: key 300 must be a mask value 0..255"),
        ("classes: [bg, car]\nmap: [7, 1]\n", "map must be a mapping"),
        ("classes: [bg, car]\nbinary: yes please\n", "binary must be true or false"),
        ("classes: [bg, car]\nmapping: {7: 1}\n", "unknown key(s) mapping"),
        ("map: {7: 1}\nbg: [0, 0, 0]\n", "put the class list under `classes:`"),
        ("- crack\n", "only one class ('crack') listed"),
        ("classes: [bg, car\n", "cannot parse"),
    ],
)
def test_classes_file_errors_are_one_line_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with one_line_error(path, fragment):
        load_class_spec(path)


def test_classes_examples_in_the_docs_parse():
    text = (ROOT / "docs" / "custom_data.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    specs = [parse_class_spec(yaml.safe_load(block), "docs") for block in blocks]
    assert len(specs) >= 5
    assert [s.names for s in specs if s.binary][:2] == [["background", "foreground"], ["background", "crack"]]
    assert {7: 1, 26: 2, 0: 0, 3: 255} in [s.label_map for s in specs]


def test_no_classes_file_is_fine_for_binary_masks_only(tmp_path):
    make_folder(tmp_path, {"a": binary_mask()})
    with one_line_error(tmp_path / "classes.yaml", "classes file not found", "--binary-masks"):
        FolderDataset(tmp_path)
    assert FolderDataset(tmp_path, binary_masks=True).num_classes == 2


# ------------------------------------------------------------------------------ configs
def test_binary_masks_option_is_for_folder_datasets_only(tmp_path):
    with pytest.raises(ValueError, match="binary_masks is for --dataset folder, not voc"):
        TrainConfig(dataset="voc", binary_masks=True)
    with pytest.raises(ValueError, match="binary_masks is for --dataset folder"):
        EvalConfig(checkpoint="ckpt", dataset="cityscapes", binary_masks=True)
    assert TrainConfig(dataset="folder", binary_masks=True).binary_masks


def test_trainer_passes_binary_masks_to_the_folder_dataset(tmp_path):
    from refineseg.training.setup import build_datasets

    raws = {"a": binary_mask(), "b": binary_mask()}
    make_folder(tmp_path, raws)
    config = TrainConfig(
        dataset="folder", data_root=str(tmp_path), train_split=None, val_split=None, binary_masks=True, crop=32, iters=1
    )
    train_set, val_set = build_datasets(config, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert train_set.num_classes == val_set.num_classes == 2
    _, mask = val_set[0]
    assert np.array_equal(mask.numpy(), expected_binary(raws["a"]))
