"""HTML reports (refineseg.report) checked without a browser: structure, values, pictures, rebuilds, compare.

The evaluate outputs are written here by hand in the shared format (metrics.json, per_image.csv,
predictions/) for a few synthetic images, with every score computed by numpy in this file.
"""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import make_model
from PIL import Image

from refineseg.cli.app import main
from refineseg.data import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, SyntheticSegmentation, eval_transform, write_label_png
from refineseg.errors import WriteError
from refineseg.report import write_eval_report, write_training_report
from refineseg.report.figures import WRONG_COLOR, Series, error_uri, line_chart, nice_ticks
from refineseg.report.html import confusion_matrix
from refineseg.training.progress import MetricsLog
from refineseg.training.trainer import validate_and_save_best
from refineseg.utils import files
from refineseg.utils.palette import IGNORE_COLOR

K = len(SYNTHETIC_CLASSES)


# --- fixtures in the shared evaluate format --------------------------------------------------------------------


def corrupt(mask: np.ndarray, index: int, variant: int) -> np.ndarray:
    """A fake prediction: the ground truth with a band of rows set to one class (wider for later images)."""
    pred = mask.copy()
    rows = (3 * index + 7 * variant) % (mask.shape[0] - 4) + 2
    pred[:rows] = (index + variant) % K
    return pred


def iou_scores(gt: np.ndarray, pred: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    keep = gt != 255
    mat = np.bincount(gt[keep].astype(np.int64) * c + pred[keep], minlength=c * c).reshape(c, c)
    tp, g, p = np.diag(mat), mat.sum(1), mat.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(g + p - tp > 0, tp / (g + p - tp), np.nan)
    return mat, iou


def write_eval_fixture(folder: Path, n: int = 6, size: int = 40, variant: int = 0) -> Path:
    """An evaluate output folder for ``n`` synthetic val images of ``size`` px (predictions = corrupted GT)."""
    dataset = SyntheticSegmentation("val", num_samples=n, size=size)
    total = np.zeros((K, K), np.int64)
    rows = []
    for i in range(n):
        _, gt = dataset.load_sample(i)
        pred = corrupt(gt, i, variant)
        write_label_png(folder / "predictions" / f"{dataset.sample_name(i)}.png", pred, SYNTHETIC_PALETTE)
        mat, iou = iou_scores(gt, pred, K)
        total += mat
        miou = float(np.nanmean(iou))
        rows.append(
            [
                i,
                dataset.sample_name(i),
                f"{np.trace(mat) / mat.sum():.6f}",
                f"{miou:.6f}",
                "" if i == 1 else f"{0.8 * miou:.6f}",
            ]
        )  # one undefined boundary IoU
    with open(folder / "per_image.csv", "w", newline="") as f:
        csv.writer(f).writerows([["index", "name", "pixel_accuracy", "miou", "boundary_iou"], *rows])
    tp, g, p = np.diag(total), total.sum(1), total.sum(0)
    iou = tp / np.maximum(g + p - tp, 1)
    per_class = [
        {
            "name": name,
            "IoU": float(iou[k]),
            "Acc": float(tp[k] / max(g[k], 1)),
            "boundary_iou": float(iou[k]) * 0.7,
            "fscore": float(2 * tp[k] / max(g[k] + p[k], 1)),
            "pixel_share": float(g[k] / g.sum()),
            "color": list(SYNTHETIC_PALETTE[k]),
        }
        for k, name in enumerate(SYNTHETIC_CLASSES)
    ]
    per_class[-1]["boundary_iou"] = None  # undefined shows as a dash
    metrics = {
        "aAcc": float(tp.sum() / total.sum()),
        "mAcc": float(np.mean(tp / np.maximum(g, 1))),
        "mIoU": float(iou.mean()),
        "mDice": 0.5,
        "fwIoU": 0.6,
        "mFscore": 0.55,
        "mBoundaryIoU": 0.4,
        "boundary_ratio": 0.02,
        "per_class": per_class,
        "trimap": {"widths": [1, 2, 4, 8, 16], "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9]},
        "confusion_matrix": total.tolist(),
        "class_names": SYNTHETIC_CLASSES,
        "palette": [list(c) for c in SYNTHETIC_PALETTE],
        "ignore_index": 255,
        "mode": "whole",
        "checkpoint": f"runs/model{variant}/best",
        "dataset": "synthetic",
        "split": "val",
        "num_images": n,
        "config": {
            "dataset": "synthetic",
            "data_root": None,
            "split": "val",
            "synthetic_val": n,
            "synthetic_size": size,
            "binary_masks": False,
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return folder


class Page(HTMLParser):
    """Collects what the tests look at: tables by id (rows of cell texts and attributes), images, links, ids."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.images: list[dict] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self._table = self._cell = None
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"_{len(self.tables)}"), [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._in_body and self._table is not None:
            self._cell = ["", attrs]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._table[-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def decode(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    assert image.format == ("PNG" if "png" in head else "JPEG")
    return image


def without_time(text: str) -> str:
    return re.sub(r"<time[^>]*>.*?</time>", "", text)


# --- evaluate report ------------------------------------------------------------------------------------------


def test_eval_report_has_the_scores_pictures_and_links(tmp_path):
    folder = write_eval_fixture(tmp_path / "eval", n=6, size=40)
    path = write_eval_report(folder, worst=2, best=1)
    text = path.read_text()
    assert path == folder / "report.html" and "http://" not in text and "https://" not in text
    page = Page(text)
    metrics = json.loads((folder / "metrics.json").read_text())

    classes = page.tables["per-class"]
    assert len(classes) == K
    for row, entry in zip(classes, metrics["per_class"]):
        cells = [c[0] for c in row]
        assert cells[1] == entry["name"]
        assert cells[2] == f"{100 * entry['IoU']:.2f}" and cells[4] == f"{100 * entry['Acc']:.2f}"
        assert cells[6] == f"{100 * entry['pixel_share']:.2f}"
        assert float(row[2][1]["data-sort"]) == pytest.approx(entry["IoU"], abs=1e-6)
    assert classes[-1][3] == ("\u2013", {"class": "num", "data-sort": ""})  # undefined boundary IoU

    # worst 2 and best 1 by per-image mIoU, computed here from the CSV
    with open(folder / "per_image.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["miou"]))
    expected = [f"img-{rows[0]['index']}", f"img-{rows[1]['index']}", f"img-{rows[-1]['index']}"]
    assert [i for i in page.ids if i.startswith("img-")] == expected
    assert sorted(h for h in page.links if h.startswith("#img-")) == sorted("#" + e for e in expected)
    assert len(page.tables["per-image"]) == 6
    assert len(page.tables["confused"]) >= 1

    assert len(page.images) == 3 * 4  # image | ground truth | prediction | error map per panel
    for img in page.images:
        picture = decode(img["src"])
        assert picture.size == (40, 40) == (int(img["width"]), int(img["height"]))
    # the prediction picture shows the saved prediction in the palette colours
    worst = page.images[2]
    pred = np.asarray(Image.open(folder / "predictions" / f"val_{int(rows[0]['index']):05d}.png"))
    assert np.array_equal(np.asarray(decode(worst["src"]).convert("RGB")), np.asarray(SYNTHETIC_PALETTE)[pred])


def test_large_images_are_downscaled_and_pngs_stay_small(tmp_path):
    folder = write_eval_fixture(tmp_path / "eval", n=3, size=96)
    text = write_eval_report(folder, worst=1, best=1, max_side=32).read_text()
    images = Page(text).images
    assert len(images) == 8
    for img in images:
        picture = decode(img["src"])
        assert max(picture.size) == 32 and len(img["src"]) < 8000


def test_report_command_rebuilds_the_same_page(tmp_path, capsys):
    folder = write_eval_fixture(tmp_path / "eval", n=4, size=32)
    first = write_eval_report(folder).read_text()
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert str(folder / "report.html") in capsys.readouterr().out
    second = (folder / "report.html").read_text()
    assert "<time" in first and without_time(first) == without_time(second)


def test_report_without_the_dataset_still_shows_the_scores(tmp_path):
    folder = write_eval_fixture(tmp_path / "eval", n=3, size=32)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["config"].update(dataset="folder", data_root=str(tmp_path / "gone"))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = write_eval_report(folder).read_text()
    page = Page(text)
    assert len(page.tables["per-class"]) == K and not page.images
    assert "Images not shown" in text and "gone" in text
    shutil.rmtree(folder / "predictions")  # evaluated without --report / --save-predictions
    text = write_eval_report(folder).read_text()
    assert not Page(text).images and "predictions is missing; evaluate with --report or --save-predictions" in text


def test_report_command_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: folder not found"
    assert main(["report", str(tmp_path)]) == 2
    assert "neither an evaluate output" in capsys.readouterr().err


# --- compare ---------------------------------------------------------------------------------------------------


def test_compare_shows_deltas_and_the_most_different_images(tmp_path, capsys):
    a = write_eval_fixture(tmp_path / "a", n=8, size=32, variant=0)
    b = write_eval_fixture(tmp_path / "b", n=8, size=32, variant=1)
    out = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(a), str(b), "--out", str(out), "--top", "3"]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text
    page = Page(text)

    def read(folder):
        with open(folder / "per_image.csv") as f:
            return {r["name"]: (int(r["index"]), float(r["miou"])) for r in csv.DictReader(f)}

    ra, rb = read(a), read(b)
    deltas = sorted(((abs(rb[n][1] - ra[n][1]), -ra[n][0], n) for n in ra), reverse=True)
    expected = [f"img-{ra[n][0]}" for _, _, n in deltas[:3]]
    assert [i for i in page.ids if i.startswith("img-")] == expected
    assert len(page.images) == 3 * 4

    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    classes = page.tables["per-class"]
    assert len(classes) == K
    for row, ca, cb in zip(classes, ma["per_class"], mb["per_class"]):
        assert row[4][0] == f"{100 * (cb['IoU'] - ca['IoU']):+.2f}".replace("+0.00", "\u00b10.00").replace(
            "-0.00", "\u00b10.00"
        )
    summary = {r[0][0]: r[3][0] for r in page.tables["summary"]}
    assert summary["mIoU"] == f"{100 * (mb['mIoU'] - ma['mIoU']):+.2f}"


def test_compare_refuses_different_classes(tmp_path, capsys):
    a = write_eval_fixture(tmp_path / "a", n=2, size=24)
    b = write_eval_fixture(tmp_path / "b", n=2, size=24)
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["class_names"] = metrics["class_names"][:-1] + ["other"]
    (b / "metrics.json").write_text(json.dumps(metrics))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.html")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {b / 'metrics.json'}: its 6 classes differ")


# --- training report -------------------------------------------------------------------------------------------


def write_training_fixture(out: Path, steps: int = 40, every: int = 10) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(
        f"model: lw_refinenet_mbv2\ndataset: synthetic\ntrain_split: train\nval_split: val\niters: {steps}\n"
    )
    records = []
    for step in range(5, steps + 1, 5):
        records.append({"iter": step, "loss": 2.0 / step, "lr": 0.01 * (1 - step / steps) ** 0.9, "it/s": 3.0})
        if step % every == 0:
            records.append(
                {"iter": step, "mIoU": 0.6 * step / steps, "aAcc": 0.5 + 0.4 * step / steps, "mAcc": 0.7 * step / steps}
            )
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def validation_summary() -> dict:
    """What evaluate_model returns, with per-class IoUs in no particular order."""
    return {
        "aAcc": 0.7,
        "mAcc": 0.4,
        "mIoU": 0.4,
        "mDice": 0.5,
        "per_class": [{"name": n, "IoU": (5 * k % 6) / 10, "Acc": k / 8} for k, n in enumerate(SYNTHETIC_CLASSES)],
    }


def test_training_report_curves_and_last_validation(tmp_path):
    out = tmp_path / "run"
    write_training_fixture(out)
    matrix = np.arange(K * K).reshape(K, K)
    path = write_training_report(out, validation_summary(), matrix, step=40, palette=SYNTHETIC_PALETTE)
    text = path.read_text()
    assert path == out / "report.html" and "http://" not in text and "https://" not in text
    saved = json.loads((out / "last_validation.json").read_text())
    assert saved["confusion_matrix"] == matrix.tolist() and saved["iter"] == 40
    page = Page(text)
    assert [row[2][0] for row in page.tables["per-class"]] == [f"{5 * k % 6 * 10:.2f}" for k in range(K)]
    # one polyline per curve: loss, LR, and the three validation scores with one point per validation
    polylines = re.findall(r'<polyline points="([^"]*)"', text)
    assert [len(p.split()) for p in polylines] == [8, 8, 4, 4, 4]
    assert "Last validation (step 40)" in text and "of 40" in text
    first = text
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert without_time((out / "report.html").read_text()) == without_time(first)


def test_training_report_never_stops_training_but_a_full_disk_does(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    write_training_fixture(out)
    (out / "metrics.jsonl").write_text('{"iter": 5, "loss": 1.0, "lr": "oops"}\n{"iter": 10, "lo')  # cut short
    assert write_training_report(out) == out / "report.html"  # bad values and a cut line are skipped

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr("refineseg.report.training_page", broken)
    assert write_training_report(out) is None
    assert "report.html not refreshed: KeyError" in caplog.text
    monkeypatch.undo()

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", enospc)
    with pytest.raises(WriteError, match="no space left on device"):
        write_training_report(out)


# --- pictures and charts ---------------------------------------------------------------------------------------


def test_error_map_marks_wrong_and_ignored_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    gt = rng.integers(0, 3, (12, 16)).astype(np.uint8)
    gt[0, :] = 255
    pred = gt.copy()
    pred[5, 3], pred[7, 9], pred[0, 0] = (gt[5, 3] + 1) % 3, (gt[7, 9] + 1) % 3, 1
    rgb = np.asarray(decode(error_uri(image, gt, pred)).convert("RGB"))
    wrong = np.all(rgb == WRONG_COLOR, axis=-1)
    assert np.argwhere(wrong).tolist() == [[5, 3], [7, 9]]
    assert np.all(rgb[0] == IGNORE_COLOR)
    rest = rgb[1:][~wrong[1:]]
    assert np.all(rest[:, 0] == rest[:, 1]) and np.all(rest[:, 1] == rest[:, 2])  # grey
    # a 4x smaller map still shows the lone wrong pixel
    big_gt = np.zeros((64, 64), np.uint8)
    big_pred = big_gt.copy()
    big_pred[33, 50] = 1
    small = np.asarray(decode(error_uri(np.zeros((64, 64, 3), np.uint8), big_gt, big_pred, max_side=16)).convert("RGB"))
    assert small.shape == (16, 16, 3) and np.argwhere(np.all(small == WRONG_COLOR, axis=-1)).tolist() == [[8, 12]]


def test_line_chart_and_ticks():
    ticks = nice_ticks(0.013, 0.87)
    assert ticks[0] <= 0.013 and ticks[-1] >= 0.87 and 4 <= len(ticks) <= 8
    assert np.allclose(np.diff(ticks), 0.2)
    svg = line_chart(
        [Series("a", [1, 2, 3], [5, float("nan"), 7], "#000")], title="T", x_label="x (px)", y_label="y (%)"
    )
    assert svg.count("<circle") == 2 and "xmlns" not in svg and "x (px)" in svg
    assert "No data yet" in line_chart([Series("a", [], [], "#000")], title="T", x_label="x", y_label="y")


# --- the real producers: `refineseg evaluate --report` and the trainer's validation ----------------------------


def test_evaluate_report_end_to_end(tmp_path, one_thread, capsys):
    checkpoint = tmp_path / "ckpt"
    make_model(class_names=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE).save_pretrained(checkpoint)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                "synthetic",
                "--synthetic-val",
                "3",
                "--synthetic-size",
                "40",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-confusion-png",
                "--report",
            ]
        )
        == 0
    )
    assert f"Report: {out / 'report.html'}" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    page = Page(text)
    assert [row[2][0] for row in page.tables["per-class"]] == [
        "\u2013" if c["IoU"] is None else f"{100 * c['IoU']:.2f}" for c in metrics["per_class"]
    ]
    assert len(page.tables["per-image"]) == 3 and len(page.images) == 3 * 4  # 3 images: all among the worst 6
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"val_0000{i}.png" for i in range(3)]
    assert "http://" not in text and "https://" not in text
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert without_time((out / "report.html").read_text()) == without_time(text)


def test_trainer_validation_refreshes_the_run_report(tmp_path, one_thread):
    model = make_model(class_names=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE).train()
    val_set = SyntheticSegmentation("val", 2, 32, transform=eval_transform())
    metrics = MetricsLog(tmp_path, None, enabled=True)
    try:
        metrics.add({"iter": 1, "loss": 1.5, "lr": 0.01})
        metrics.add({"iter": 2, "loss": 1.2, "lr": 0.009})
        validate_and_save_best(model, val_set, tmp_path, metrics, step=2, best_miou=-1.0)
    finally:
        metrics.close()
    summary = json.loads((tmp_path / "best" / "metrics.json").read_text())
    text = (tmp_path / "report.html").read_text()
    page = Page(text)
    assert [row[2][0] for row in page.tables["per-class"]] == [
        "\u2013" if c["IoU"] is None else f"{100 * c['IoU']:.2f}" for c in summary["per_class"]
    ]
    curves = 5 + ("trimap" in summary)  # loss, LR, 3 validation scores (+ the trimap curve)
    assert "Last validation (step 2)" in text and len(re.findall("<polyline", text)) == curves
    saved = json.loads((tmp_path / "last_validation.json").read_text())
    assert np.asarray(saved["confusion_matrix"]).sum() == 2 * 32 * 32 and saved["palette"][1] == [128, 0, 0]


def test_confusion_matrix_rows_are_normalized_and_large_ones_are_a_picture():
    rng = np.random.default_rng(1)
    matrix = rng.integers(0, 1000, (4, 4))
    names, colors = ["a", "b", "c", "d"], [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    page = Page(confusion_matrix(matrix, names, colors))
    share = matrix / matrix.sum(1, keepdims=True)
    tips = re.findall(r'title="ground truth (\w), predicted (\w): ([\d,]+) px', confusion_matrix(matrix, names, colors))
    assert [(t, p, int(n.replace(",", ""))) for t, p, n in tips] == [
        (names[i], names[j], int(matrix[i, j])) for i in range(4) for j in range(4)
    ]
    off = share - np.diag(np.diag(share))
    i, j = np.unravel_index(off.argmax(), off.shape)
    assert [c[0] for c in page.tables["confused"][0]] == [
        names[i],
        names[j],
        f"{100 * off[i, j]:.2f}",
        f"{matrix[i, j]:,}",
    ]
    big = confusion_matrix(np.eye(40, dtype=np.int64) * 5 + 1, [f"c{k}" for k in range(40)], [(9, 9, 9)] * 40)
    image = Page(big).images
    assert len(image) == 1 and decode(image[0]["src"]).size == (640, 640) and "<td" in big  # pairs table
