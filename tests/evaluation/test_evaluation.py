"""evaluate_model / run_evaluate checked against an independent numpy evaluation of the same model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import helpers
import numpy as np
import pytest
import torch
from PIL import Image

import refineseg
from refineseg.cli.evaluate import EvalConfig, run_evaluate
from refineseg.data import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    FolderDataset,
    SyntheticSegmentation,
    eval_transform,
    read_mask,
    write_label_png,
    write_synthetic,
)
from refineseg.errors import CheckpointError, ConfigError
from refineseg.evaluation.evaluate import evaluate_model, read_class_map

K = len(SYNTHETIC_CLASSES)

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(num_classes: int = K) -> refineseg.SegmentationModel:
    """Untrained lw_refinenet_mbv2 with the synthetic classes (or ``num_classes`` made-up ones)."""
    if num_classes == K:
        return helpers.make_model(class_names=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE)
    return helpers.make_model(class_names=[f"c{i}" for i in range(num_classes)], palette=None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Folder dataset with 3 val images (64 px); one mask gets an ignore (255) band."""
    root = Path(write_synthetic(tmp_path_factory.mktemp("data"), num_train=1, num_val=3, size=64))
    mask_path = root / "masks" / "val_00001.png"
    mask = read_mask(mask_path)
    mask[10:20] = 255
    write_label_png(mask_path, mask, SYNTHETIC_PALETTE)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best"
    make_model().save_pretrained(path)
    return path


def numpy_reference(model, dataset) -> tuple[np.ndarray, float, float]:
    """Confusion matrix, mIoU and aAcc from running the model image by image, numpy only."""
    mat = np.zeros((K, K), np.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            image, mask = dataset[i]
            pred = model(image[None]).argmax(1)[0].numpy()
            target = mask.numpy()
            keep = target != 255
            np.add.at(mat, (target[keep], pred[keep]), 1)
    tp, gt, pr = np.diag(mat), mat.sum(1), mat.sum(0)
    union = gt + pr - tp
    miou = float(np.mean(tp[union > 0] / union[union > 0]))
    return mat, miou, float(tp.sum() / mat.sum())


def test_evaluate_model_matches_numpy_reference(data_root):
    model = make_model()
    dataset = FolderDataset(data_root, "val", transform=eval_transform(model.config.mean, model.config.std))
    summary, matrix = evaluate_model(model, dataset, progress=False)
    ref_matrix, ref_miou, ref_aacc = numpy_reference(model, dataset)

    assert matrix.dtype == np.int64 and np.array_equal(matrix, ref_matrix)
    assert matrix.sum() == 3 * 64 * 64 - 10 * 64  # ignored band excluded
    assert len(np.flatnonzero(matrix.sum(0))) >= 2  # the model predicts several classes
    assert summary["mIoU"] == pytest.approx(ref_miou, abs=1e-12)
    assert summary["aAcc"] == pytest.approx(ref_aacc, abs=1e-12)
    assert [c["name"] for c in summary["per_class"]] == SYNTHETIC_CLASSES
    assert not model.training


def test_slide_and_multiscale_agree_with_whole(data_root):
    model = make_model()
    dataset = FolderDataset(data_root, "val", transform=eval_transform(model.config.mean, model.config.std))
    _, whole = evaluate_model(model, dataset, mode="whole", progress=False)
    _, slide = evaluate_model(model, dataset, mode="slide", crop=64, progress=False)
    _, multi = evaluate_model(model, dataset, mode="multiscale", crop=96, scales=[1.0], flip=False, progress=False)
    assert np.array_equal(whole, slide) and np.array_equal(whole, multi)
    # Real sliding windows (crop < image) and flipping do change the result.
    _, small = evaluate_model(model, dataset, mode="slide", crop=40, stride=24, progress=False)
    assert small.sum() == whole.sum() and not np.array_equal(small, whole)


def test_evaluate_model_restores_training_mode(data_root):
    model = make_model().train()
    dataset = FolderDataset(data_root, "val", transform=eval_transform())
    evaluate_model(model, dataset, progress=False)
    assert model.training


def _evaluate_on_rank(rank: int, root: str, out_dir: str) -> None:
    dataset = FolderDataset(root, "val", transform=eval_transform())
    summary, matrix = evaluate_model(make_model(), dataset, progress=False, per_image=True)
    np.save(f"{out_dir}/rank{rank}.npy", matrix)
    Path(f"{out_dir}/rank{rank}.json").write_text(json.dumps(summary))


def test_distributed_evaluation_equals_single_process(data_root, tmp_path, gloo_group):
    gloo_group(_evaluate_on_rank, 2, str(data_root), str(tmp_path))
    # Single-threaded like the workers (one_thread fixture), so the arithmetic is identical.
    summary, single = evaluate_model(
        make_model(), FolderDataset(data_root, "val", transform=eval_transform()), progress=False, per_image=True
    )
    summary = json.loads(json.dumps(summary))
    assert [row["index"] for row in summary["per_image"]] == [0, 1, 2]
    for rank in range(2):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), single)
        # Boundary and trimap counts are summed and per-image rows gathered from both ranks.
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == summary


def test_run_evaluate_writes_metrics_and_plot(data_root, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = run_evaluate(
        EvalConfig(
            checkpoint=str(checkpoint),
            dataset="folder",
            data_root=str(data_root),
            out=str(out),
            device="cpu",
            precision="fp32",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("aAcc", "mAcc", "mIoU", "mDice"):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[key] == pytest.approx(summary[key])
    assert len(metrics["per_class"]) == K
    assert all(c["IoU"] is None or 0.0 <= c["IoU"] <= 1.0 for c in metrics["per_class"])
    assert metrics["mode"] == "whole" and metrics["split"] == "val" and metrics["num_images"] == 3
    assert metrics["dataset"] == "folder" and metrics["checkpoint"] == str(checkpoint)

    dataset = FolderDataset(data_root, "val", transform=eval_transform())
    _, ref_miou, _ = numpy_reference(make_model(), dataset)
    assert metrics["mIoU"] == pytest.approx(ref_miou, abs=1e-12)  # same weights after the round trip

    with Image.open(out / "confusion_matrix.png") as png:
        png.load()
        assert png.width > 100 and png.height > 100
    printed = capsys.readouterr().out
    assert "mIoU" in printed and str(out / "metrics.json") in printed
    assert (out / "per_image.csv").is_file() and not (out / "predictions").exists()


def test_run_evaluate_synthetic_with_resize(checkpoint, tmp_path):
    config = EvalConfig(
        checkpoint=str(checkpoint),
        dataset="synthetic",
        out=str(tmp_path),
        device="cpu",
        precision="fp32",
        synthetic_val=2,
        synthetic_size=64,
        resize=40,
        confusion_png=False,
    )
    summary = run_evaluate(config)
    dataset = SyntheticSegmentation("val", 2, size=64, transform=eval_transform(resize=40))
    expected, matrix = evaluate_model(make_model(), dataset, progress=False)
    assert matrix.sum() == 2 * 40 * 40
    assert summary["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12) and summary["num_images"] == 2
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_class_count_mismatch_names_checkpoint(data_root, tmp_path):
    ckpt = tmp_path / "four"
    make_model(num_classes=4).save_pretrained(ckpt)
    with pytest.raises(CheckpointError) as err:
        run_evaluate(
            EvalConfig(
                checkpoint=str(ckpt),
                dataset="folder",
                data_root=str(data_root),
                out=str(tmp_path / "eval"),
                device="cpu",
            )
        )
    message = str(err.value)
    assert str(ckpt) in message and "4" in message and "6" in message and "\n" not in message
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="mode"):
        EvalConfig(checkpoint="x", dataset="synthetic", mode="tiles")
    with pytest.raises(ValueError, match="stride"):
        EvalConfig(checkpoint="x", dataset="synthetic", crop=64, stride=128)
    assert math.isclose(EvalConfig(checkpoint="x", dataset="voc").scales[-1], 1.75)


def test_cli_class_mismatch_is_one_line_error(data_root, tmp_path, run_cli):
    ckpt = tmp_path / "four"
    make_model(num_classes=4).save_pretrained(ckpt)
    result = run_cli(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "folder",
        "--data-root",
        str(data_root),
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(ckpt) in lines[0]
    assert "Traceback" not in result.stderr


def cv2_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Boundary IoU reference recipe: zero border, d erosions by a 3x3 kernel, crop, mask - eroded."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask & (eroded == 0)


def test_saved_predictions_reproduce_metrics_json_and_per_image_csv(data_root, checkpoint, tmp_path):
    out = tmp_path / "eval"
    run_evaluate(
        EvalConfig(
            checkpoint=str(checkpoint),
            dataset="folder",
            data_root=str(data_root),
            out=str(out),
            device="cpu",
            precision="fp32",
            save_predictions=True,
            confusion_png=False,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    raw = FolderDataset(data_root, "val")
    names = [raw.sample_name(i) for i in range(len(raw))]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted(f"{n}.png" for n in names)

    model = make_model()
    normalized = FolderDataset(data_root, "val", transform=eval_transform(model.config.mean, model.config.std))
    mat = np.zeros((K, K), np.int64)
    inter, union = np.zeros(K, np.int64), np.zeros(K, np.int64)
    rows = []
    for i, name in enumerate(names):
        pred = read_mask(out / "predictions" / f"{name}.png")
        target = raw.load_sample(i)[1]
        with torch.no_grad():  # the saved file is the model's argmax
            assert np.array_equal(pred, model(normalized[i][0][None]).argmax(1)[0].numpy())
        valid = target != 255
        image_mat = np.zeros((K, K), np.int64)
        np.add.at(image_mat, (target[valid], pred[valid]), 1)
        d = max(1, int(round(0.02 * math.sqrt(target.shape[0] ** 2 + target.shape[1] ** 2))))
        image_inter, image_union = np.zeros(K, np.int64), np.zeros(K, np.int64)
        for c in range(K):
            gt_band = cv2_band(target == c, d) & valid
            pred_band = cv2_band(pred == c, d) & valid
            image_inter[c], image_union[c] = (gt_band & pred_band).sum(), (gt_band | pred_band).sum()
        tp, present = np.diag(image_mat), image_mat.sum(0) + image_mat.sum(1) - np.diag(image_mat)
        # Both means over the classes present in the image (a present class with empty bands: 0).
        band_iou = np.divide(image_inter, image_union, out=np.zeros(K), where=image_union > 0)
        rows.append(
            (
                i,
                name,
                tp.sum() / valid.sum(),
                np.mean(tp[present > 0] / present[present > 0]),
                np.mean(band_iou[present > 0]),
            )
        )
        mat += image_mat
        inter += image_inter
        union += image_union

    assert np.array_equal(np.array(metrics["confusion_matrix"]), mat)
    biou = [i / u if u else None for i, u in zip(inter, union)]
    assert [c["boundary_iou"] for c in metrics["per_class"]] == pytest.approx(biou, abs=1e-12)
    assert metrics["mBoundaryIoU"] == pytest.approx(np.mean([b for b in biou if b is not None]), abs=1e-12)
    assert 0.0 < metrics["mBoundaryIoU"] < metrics["aAcc"] < 1.0
    gt_share = mat.sum(1) / mat.sum()
    assert [c["pixel_share"] for c in metrics["per_class"]] == pytest.approx(gt_share.tolist())
    assert metrics["boundary_ratio"] == 0.02 and metrics["ignore_index"] == 255
    assert metrics["class_names"] == SYNTHETIC_CLASSES
    assert metrics["palette"] == [list(c) for c in model.config.palette]
    assert [c["color"] for c in metrics["per_class"]] == metrics["palette"]
    assert metrics["trimap"]["widths"] == list(range(1, 41)) and len(metrics["trimap"]["accuracy"]) == 40
    assert metrics["config"]["save_predictions"] is True

    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["index", "name", "pixel_accuracy", "miou", "boundary_iou"]
    assert len(table) == 1 + len(names)
    for got, want in zip(table[1:], rows):
        assert int(got[0]) == want[0] and got[1] == want[1]
        assert [float(v) for v in got[2:]] == pytest.approx(list(want[2:]), abs=1e-6)


# --- checkpoint class names vs the dataset's (issue 20.6) ---------------------------------------------

REORDER = [3, 0, 5, 1, 4, 2]  # checkpoint class i is synthetic class REORDER[i]


def save_relabelled(path: Path, names: list[str], order: list[int]) -> Path:
    """make_model()'s weights with its output classes in ``order`` (class i = synthetic class order[i]),
    named ``names`` (and coloured like those synthetic classes)."""
    base = make_model()
    model = refineseg.create_model(
        "lw_refinenet_mbv2", num_classes=K, class_names=names, palette=[SYNTHETIC_PALETTE[j] for j in order]
    )
    state = base.state_dict()
    state["head.conv.weight"] = state["head.conv.weight"][order]
    state["head.conv.bias"] = state["head.conv.bias"][order]
    model.load_state_dict(state)
    model.save_pretrained(path)
    return path


def evaluate_folder(data_root: Path, checkpoint: Path, out: Path, **options) -> dict:
    return run_evaluate(
        EvalConfig(
            checkpoint=str(checkpoint),
            dataset="folder",
            data_root=str(data_root),
            out=str(out),
            device="cpu",
            precision="fp32",
            confusion_png=False,
            save_predictions=True,
            **options,
        )
    )


RENAMED = ["background", "disk", "box", "stripes", "wire", "dot"]  # "square" -> "box"


@pytest.mark.parametrize(
    "names, order, first",
    [
        (RENAMED, list(range(K)), "class 2 is 'box' in the checkpoint but 'square' in the dataset;"),
        (
            [SYNTHETIC_CLASSES[j] for j in REORDER],
            REORDER,
            "class 0 is 'stripes' in the checkpoint but 'background' in the dataset (the same names in another order)",
        ),
    ],
)
def test_checkpoint_with_other_class_names_is_refused(data_root, tmp_path, names, order, first):
    ckpt = save_relabelled(tmp_path / "ckpt", names, order)
    with pytest.raises(CheckpointError) as err:
        evaluate_folder(data_root, ckpt, tmp_path / "eval")
    message = str(err.value)
    assert message.startswith(f"{ckpt}: {first}") and "\n" not in message
    assert "--class-map" in message and "--ignore-class-names" in message
    assert not (tmp_path / "eval").exists()


def test_checkpoint_saved_without_class_names_is_evaluated(data_root, checkpoint, tmp_path):
    want = evaluate_folder(data_root, checkpoint, tmp_path / "base")
    ckpt = save_relabelled(tmp_path / "ckpt", [f"class_{i}" for i in range(K)], list(range(K)))  # the placeholders
    got = evaluate_folder(data_root, ckpt, tmp_path / "eval")
    assert got["confusion_matrix"] == want["confusion_matrix"] and got["class_names"] == SYNTHETIC_CLASSES


def test_ignore_class_names_evaluates_in_the_checkpoints_order(data_root, checkpoint, tmp_path):
    want = evaluate_folder(data_root, checkpoint, tmp_path / "base")
    ckpt = save_relabelled(tmp_path / "ckpt", RENAMED, list(range(K)))
    got = evaluate_folder(data_root, ckpt, tmp_path / "eval", ignore_class_names=True)
    assert got["confusion_matrix"] == want["confusion_matrix"] and got["mIoU"] == want["mIoU"]
    assert got["class_names"] == SYNTHETIC_CLASSES


@pytest.mark.parametrize(
    "text",
    [
        "stripes: stripes\n",  # a mapping; unlisted names go to the dataset class of the same name
        "".join(f"- {SYNTHETIC_CLASSES[j]}\n" for j in REORDER),  # a list, in the checkpoint's order
    ],
)
def test_class_map_puts_the_predictions_in_the_datasets_order(data_root, checkpoint, tmp_path, text):
    want = evaluate_folder(data_root, checkpoint, tmp_path / "base")
    ckpt = save_relabelled(tmp_path / "ckpt", [SYNTHETIC_CLASSES[j] for j in REORDER], REORDER)
    (tmp_path / "map.yaml").write_text(text)
    got = evaluate_folder(data_root, ckpt, tmp_path / "eval", class_map=str(tmp_path / "map.yaml"))
    for key in ("confusion_matrix", "mIoU", "mAcc", "mFscore", "mBoundaryIoU", "per_class", "palette"):
        assert got[key] == want[key], key
    assert (np.array(want["confusion_matrix"]).sum(0) > 0).sum() >= 3  # the order matters: several predicted
    for png in (tmp_path / "base" / "predictions").iterdir():  # the saved label maps too
        assert np.array_equal(read_mask(png), read_mask(tmp_path / "eval" / "predictions" / png.name))


def test_class_map_renames(data_root, checkpoint, tmp_path):
    want = evaluate_folder(data_root, checkpoint, tmp_path / "base")
    ckpt = save_relabelled(tmp_path / "ckpt", RENAMED, list(range(K)))
    (tmp_path / "map.yaml").write_text("box: square\n")
    got = evaluate_folder(data_root, ckpt, tmp_path / "eval", class_map=str(tmp_path / "map.yaml"))
    assert got["confusion_matrix"] == want["confusion_matrix"] and got["class_names"] == SYNTHETIC_CLASSES


@pytest.mark.parametrize(
    "text, match",
    [
        ("car: square\n", "'car' is not a class of the checkpoint"),
        ("box: lorry\n", "checkpoint class 'box' maps to 'lorry', not a class of the dataset"),
        ("box: disk\n", "checkpoint classes 'disk' and 'box' both map to 'disk'"),
        ("- square\n", "a list of 6 dataset class names, got list of 1"),
        ("box: square\nbox: disk\n", "line 2, column 1: duplicate key 'box'"),
    ],
)
def test_bad_class_map_is_a_one_line_config_error(tmp_path, text, match):
    (tmp_path / "map.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        read_class_map(tmp_path / "map.yaml", RENAMED, SYNTHETIC_CLASSES)
    assert str(err.value).startswith(str(tmp_path / "map.yaml")) and "\n" not in str(err.value)


def test_cli_class_names_mismatch_is_one_line_error(data_root, tmp_path, run_cli):
    ckpt = save_relabelled(tmp_path / "ckpt", RENAMED, list(range(K)))
    args = [
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "folder",
        "--data-root",
        str(data_root),
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
        "--no-confusion-png",
    ]
    result = run_cli(*args, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {ckpt}: class 2 is 'box' in the checkpoint but 'square' in the dataset")
    (tmp_path / "map.yaml").write_text("box: square\n")
    run_cli(*args, "--class-map", str(tmp_path / "map.yaml"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["class_names"] == SYNTHETIC_CLASSES
