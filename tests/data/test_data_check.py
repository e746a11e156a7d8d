"""The fail-fast data check (refineseg.data.check) and `refineseg check-data` (refineseg.data.stats)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from refineseg.cli.app import main
from refineseg.data import FolderDataset, SyntheticSegmentation
from refineseg.data.check import cache_file, check_before_run, check_dataset
from refineseg.data.stats import dataset_statistics
from refineseg.errors import DataCheckError, DataError

CLASSES = ["background", "road", "car", "tree", "sky", "person"]
PALETTE = [(0, 0, 0), (128, 64, 128), (0, 0, 142), (107, 142, 35), (70, 130, 180), (220, 20, 60)]
W, H = 40, 30  # image size of the test samples


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Keep the data-check cache in the test's folder."""
    monkeypatch.setenv("REFINESEG_HOME", str(tmp_path / "home"))


def write_mask(path: Path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette([c for color in PALETTE for c in color] + [0] * (768 - 3 * len(PALETTE)))
    img.save(path)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_folder(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A folder dataset: ``splits`` maps split -> number of good samples (noisy images, blocky masks)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    classes = [{"name": n, "color": list(c)} for n, c in zip(CLASSES, PALETTE)]
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    for split, count in splits.items():
        names = []
        for i in range(count):
            name = f"{split}_{i:03d}"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
            blocks = rng.integers(0, len(CLASSES), (3, 4))
            labels = np.kron(blocks, np.ones((10, 10), np.int64))
            labels[rng.random((H, W)) < 0.05] = 255  # some ignore pixels
            write_mask(root / "masks" / f"{name}.png", labels)
            names.append(name)
        (root / "splits" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return root


def add_bad_samples(root: Path, split: str) -> dict[str, Path]:
    """Append one sample per kind of damage to ``split``; returns kind -> the file that is bad."""
    rng = np.random.default_rng(1)
    good = lambda: rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # noqa: E731
    labels = np.zeros((H, W), np.uint8)
    images, masks = root / "images", root / "masks"
    bad = {}
    (images / "corrupt.png").write_bytes(b"this is not an image" * 20)
    bad["corrupt"] = images / "corrupt.png"
    Image.fromarray(good()).save(images / "trunc_png.png")
    truncate(images / "trunc_png.png")
    bad["truncated png image"] = images / "trunc_png.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(
        images / "trunc_jpg.jpg", quality=95
    )
    truncate(images / "trunc_jpg.jpg", 0.6)
    write_mask(masks / "trunc_jpg.png", np.zeros((96, 128), np.uint8))
    bad["truncated jpeg image"] = images / "trunc_jpg.jpg"
    Image.fromarray(good()).save(images / "trunc_mask.png")
    write_mask(masks / "trunc_mask.png", rng.integers(0, 6, (H, W)))
    truncate(masks / "trunc_mask.png")
    bad["truncated mask"] = masks / "trunc_mask.png"
    Image.fromarray(good()).save(images / "wrong_size.png")
    write_mask(masks / "wrong_size.png", np.zeros((H + 2, W), np.uint8))
    bad["wrong size"] = masks / "wrong_size.png"
    Image.fromarray(good()).save(images / "label200.png")
    labels200 = labels.copy()
    labels200[:3, :3] = 200
    write_mask(masks / "label200.png", labels200)
    bad["label 200"] = masks / "label200.png"
    for name in ("corrupt", "trunc_png"):
        write_mask(masks / f"{name}.png", labels)
    stems = ["corrupt", "trunc_png", "trunc_jpg", "trunc_mask", "wrong_size", "label200"]
    with open(root / "splits" / f"{split}.txt", "a") as f:
        f.write("".join(s + "\n" for s in stems))
    return bad


def test_every_problem_in_one_error(tmp_path):
    root = make_folder(tmp_path / "data", {"train": 3})
    bad = add_bad_samples(root, "train")
    dataset = FolderDataset(root, "train")
    missing = Path(dataset.samples[0][0])
    missing.unlink()  # disappears after the dataset was listed
    with pytest.raises(DataCheckError) as info:
        check_dataset(dataset, workers=0)
    err = info.value
    assert err.failed == 7 and err.total == 9
    for kind, path in {**bad, "missing": missing}.items():
        assert any(line.startswith(f"{path}: ") for line in err.problems), (kind, err.problems)
    text = str(err)
    assert text.splitlines()[0].startswith(f"{len(err.problems)} problem(s) in 7 of 9 samples")
    assert "label values 200 are out of range" in text and "mask is 40x32 but image" in text
    good = [Path(i) for i, _ in dataset.samples[1:3]]
    assert not any(str(p) in text for p in good)


def test_worker_processes_find_the_same_problems(tmp_path):
    root = make_folder(tmp_path / "data", {"train": 10})
    add_bad_samples(root, "train")
    dataset = FolderDataset(root, "train")
    found = []
    for workers in (0, 2):
        with pytest.raises(DataCheckError) as info:
            check_dataset(dataset, workers=workers, cache=False)
        found.append(info.value.problems)
    assert found[0] == found[1] and len(found[0]) == 6


def test_message_shows_twenty_lines_then_a_count():
    problems = [f"/data/m{i}.png: label values 9 are out of range" for i in range(27)]
    lines = str(DataCheckError(problems, 27, 100, "X split 'train'")).splitlines()
    assert len(lines) == 1 + DataCheckError.SHOWN + 1
    assert lines[1].strip() == problems[0] and lines[DataCheckError.SHOWN].strip() == problems[DataCheckError.SHOWN - 1]
    assert lines[-1].strip() == "... and 7 more"


def test_cache_rechecks_only_what_changed(tmp_path):
    root = make_folder(tmp_path / "data", {"train": 12})
    dataset = FolderDataset(root, "train")
    first = check_dataset(dataset, workers=2)
    assert (first.checked, first.cached, first.total) == (12, 0, 12)
    assert cache_file(dataset).is_file()
    again = check_dataset(FolderDataset(root, "train"), workers=2)
    assert (again.checked, again.cached) == (0, 12)
    image, mask = dataset.samples[4]
    st = os.stat(mask)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = check_dataset(dataset, workers=0)
    assert (touched.checked, touched.cached) == (1, 11)
    truncate(Path(image))  # a change that breaks the file is found, not excused by the cache
    with pytest.raises(DataCheckError) as info:
        check_dataset(dataset, workers=0)
    assert info.value.problems[0].startswith(f"{image}: ")
    # Other classes (a different label check) invalidate every remembered sample.
    fewer = FolderDataset(root, "train", classes=CLASSES[:3])
    with pytest.raises(DataCheckError) as info:
        check_dataset(fewer, workers=0)
    assert info.value.failed >= 11 and "out of range: 3 classes" in str(info.value)


def test_synthetic_is_skipped_but_has_statistics():
    dataset = SyntheticSegmentation("val", num_samples=3, size=24)
    assert check_dataset(dataset).skipped
    stats = dataset_statistics(dataset, workers=0)
    masks = [dataset.load_sample(i)[1] for i in range(3)]
    for entry in stats["classes"]:
        assert entry["pixels"] == sum(int((m == entry["index"]).sum()) for m in masks)
        assert entry["images"] == sum(int((m == entry["index"]).any()) for m in masks)
    assert stats["problems"] == [] and stats["image_sizes"]["min"] == [24, 24]


def independent_counts(root: Path, stems: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per class pixels, images and pixels of those images, and ignore pixels, straight from the PNGs."""
    pixels, images, image_pixels, ignore = np.zeros(6, int), np.zeros(6, int), np.zeros(6, int), 0
    for stem in stems:
        m = np.array(Image.open(root / "masks" / f"{stem}.png"))
        for c in range(6):
            n = int((m == c).sum())
            pixels[c] += n
            images[c] += n > 0
            image_pixels[c] += m.size if n else 0
        ignore += int((m == 255).sum())
    return pixels, images, image_pixels, ignore


def test_check_data_counts_equal_an_independent_count(tmp_path, capsys):
    root = make_folder(tmp_path / "data", {"train": 9, "val": 4})
    out = tmp_path / "report"
    rc = main(
        [
            "check-data",
            "--dataset",
            "folder",
            "--data-root",
            str(root),
            "--split",
            "train",
            "val",
            "--out",
            str(out),
            "--workers",
            "2",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "data_report.json").read_text())
    stems = [f"train_{i:03d}" for i in range(9)] + [f"val_{i:03d}" for i in range(4)]
    pixels, images, image_pixels, ignore = independent_counts(root, stems)
    assert [c["pixels"] for c in report["classes"]] == pixels.tolist()
    assert [c["images"] for c in report["classes"]] == images.tolist()
    assert [c["image_pixels"] for c in report["classes"]] == image_pixels.tolist()
    assert [c["name"] for c in report["classes"]] == CLASSES
    assert sum(c["share"] for c in report["classes"]) == pytest.approx(1.0)
    assert report["ignore_share"] == pytest.approx(ignore / (13 * W * H))
    assert report["num_samples"] == 13 and report["splits"] == ["train", "val"]
    assert report["image_sizes"]["most_common"] == [{"width": W, "height": H, "images": 13}]
    assert report["problems"] == [] and report["out_of_range"] == []
    with Image.open(out / "class_frequencies.png") as png:
        assert png.format == "PNG" and png.mode in ("RGB", "RGBA") and png.size[0] > 100
    printed = capsys.readouterr().out
    assert "| road" in printed and f"{pixels[1]:,}" in printed
    # What check-data passed, the check before training does not open again.
    result = check_dataset(FolderDataset(root, "train"), workers=0)
    assert (result.checked, result.cached) == (0, 9)


def test_check_data_lists_labels_outside_the_classes(tmp_path, capsys):
    root = make_folder(tmp_path / "data", {"train": 2})
    add_bad_samples(root, "train")
    out = tmp_path / "report"
    rc = main(["check-data", "--dataset", "folder", "--data-root", str(root), "--out", str(out), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "6 problem(s) in 6 of 8 samples" in err
    report = json.loads((out / "data_report.json").read_text())
    assert report["out_of_range"] == [{"label": 200, "pixels": 9, "files": [str(root / "masks" / "label200.png")]}]
    assert len(report["problems"]) == 6 and (out / "class_frequencies.png").is_file()


TRAIN_ARGS = [
    "--model",
    "lw_refinenet18",
    "--iters",
    "2",
    "--crop",
    "32",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--val-interval",
    "0",
    "--log-interval",
    "1",
]


def test_train_stops_before_any_step_naming_every_bad_file(tmp_path, capsys):
    root = make_folder(tmp_path / "data", {"train": 2, "val": 2})
    bad = add_bad_samples(root, "train")
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data-root", str(root), "--out", str(out), *TRAIN_ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: 6 problem(s) in 6 of 10 samples"), err
    for path in bad.values():
        assert f"{path}: " in err
    assert "--skip-data-check" in err
    assert not (out / "last").exists()


def test_skip_data_check_runs_until_a_bad_file(tmp_path, capsys):
    root = make_folder(tmp_path / "data", {"train": 2, "val": 2})
    bad = add_bad_samples(root, "train")  # 6 of 8 training samples are bad: the first batches meet one
    out = tmp_path / "run"
    rc = main(
        ["train", "--dataset", "folder", "--data-root", str(root), "--out", str(out), "--skip-data-check", *TRAIN_ARGS]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "problem(s)" not in err, err
    assert len(err.strip().splitlines()) == 1 and sum(str(p) in err for p in bad.values()) == 1, err
    assert not cache_file(FolderDataset(root, "train")).exists()  # nothing was checked


def _check_on_rank(rank: int, root: str, out: str) -> None:
    try:
        check_before_run([FolderDataset(root, "train"), FolderDataset(root, "val")])
        outcome = ["passed", ""]
    except DataError as e:
        outcome = [type(e).__name__, str(e)]
    Path(out, f"{rank}.json").write_text(json.dumps(outcome))


def test_under_torchrun_rank_0_checks_and_every_rank_stops(tmp_path, gloo_group):
    root = make_folder(tmp_path / "data", {"train": 2, "val": 1})
    bad = add_bad_samples(root, "val")
    gloo_group(_check_on_rank, 2, str(root), str(tmp_path))
    kind0, text0 = json.loads((tmp_path / "0.json").read_text())
    kind1, text1 = json.loads((tmp_path / "1.json").read_text())
    assert kind0 == "DataCheckError" and all(str(p) in text0 for p in bad.values())
    assert kind1 == "DataError" and "rank 0" in text1


def test_evaluate_stops_before_any_image(tmp_path, capsys):
    import refineseg

    root = make_folder(tmp_path / "data", {"val": 2})
    bad = add_bad_samples(root, "val")
    ckpt = tmp_path / "ckpt"
    refineseg.create_model("lw_refinenet_mbv2", num_classes=len(CLASSES)).save_pretrained(ckpt)
    args = [
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--split",
        "val",
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 6 problem(s) in 6 of 8 samples") and all(f"{p}: " in err for p in bad.values())
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_missing_files_of_a_split_are_all_reported_at_once(tmp_path, capsys):
    from refineseg.data import VOCSegmentation, write_image

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nc\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    write_image(voc / "JPEGImages" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    write_image(voc / "JPEGImages" / "c.jpg", np.zeros((8, 8, 3), np.uint8))
    (voc / "SegmentationClass").mkdir()
    (voc / "SegmentationClass" / "a.png").write_bytes((voc / "JPEGImages" / "a.jpg").read_bytes())
    missing = [
        str(voc / "JPEGImages" / "b.jpg"),
        str(voc / "SegmentationClass" / "b.png"),
        str(voc / "SegmentationClass" / "c.png"),
    ]
    dataset = VOCSegmentation(tmp_path, "train")  # the reader records them; the check names them with the rest
    assert len(dataset) == 3 and sorted(dataset.missing) == sorted(missing)
    with pytest.raises(DataCheckError) as info:
        check_dataset(dataset, workers=0)
    assert [p.split(": ")[0] for p in info.value.problems if " is missing" in p] == missing
    assert info.value.failed >= 2 and info.value.total == 3
    for run, skip in (("run", []), ("skipped", ["--skip-data-check"])):  # skipping still stops on absent files
        assert (
            main(["train", "--dataset", "voc", "--data-root", str(tmp_path), "--out", str(tmp_path / run), *skip]) == 2
        )
        err = capsys.readouterr().err
        assert all(f"{path}: " in err for path in missing), err


def test_folder_dataset_lists_every_missing_image_and_mask(tmp_path):
    root = make_folder(tmp_path / "data", {"train": 4})
    (root / "masks" / "train_001.png").unlink()
    (root / "masks" / "train_003.png").unlink()
    (root / "images" / "train_002.png").unlink()
    dataset = FolderDataset(root, "train")
    assert len(dataset) == 4 and dataset.sample_name(2) == "train_002"
    with pytest.raises(DataCheckError) as info:
        check_dataset(dataset, workers=0)
    expected = [
        str(root / "masks" / "train_001.png"),
        str(root / "splits" / "train.txt"),
        str(root / "masks" / "train_003.png"),
    ]
    assert [p.split(": ")[0] for p in info.value.problems] == expected
    assert "no mask found" in info.value.problems[0] and "'train_002'" in info.value.problems[1]
    with pytest.raises(DataCheckError) as skipped:  # --skip-data-check: no file opened, the same three named
        check_before_run([dataset, dataset], skip=True)
    assert skipped.value.problems == info.value.problems and (skipped.value.failed, skipped.value.total) == (3, 4)
    for index, line in ((1, info.value.problems[0]), (2, info.value.problems[1])):
        with pytest.raises(DataError) as read:  # read without any check: one line naming the file
            dataset[index]
        assert str(read.value) == line
    (root / "masks" / "train_001.png").write_bytes((root / "masks" / "train_000.png").read_bytes())
    assert dataset.load_sample(1)[1].shape == (H, W)  # put back after the listing: read as any other


# ------------------------------------------------------------- a non-image, a missing mask, a wrong size


def make_deep_folder(tmp_path: Path, train: int = 33, val: int = 2) -> tuple[Path, dict[str, Path]]:
    """A folder dataset deep in subfolders (``<split>/images``, ``<split>/masks``, no split files) whose
    train split holds, among good samples, a non-image, a missing mask and a mask of the wrong size."""
    root = tmp_path / "projects" / "roads" / "2024" / "survey" / "dataset"
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    classes = [{"name": n, "color": list(c)} for n, c in zip(CLASSES, PALETTE)]
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    for split, count in (("train", train), ("val", val)):  # a val split too, for `train`
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                root / split / "images" / f"frame_{i:04d}.png"
            )
            write_mask(root / split / "masks" / f"frame_{i:04d}.png", rng.integers(0, len(CLASSES), (H, W)))
    images, masks = root / "train" / "images", root / "train" / "masks"
    bad = {
        "not an image file": images / "frame_0011.png",
        "no mask found": masks / "frame_0019.png",
        "mask is 40x34 but image": masks / "frame_0027.png",
    }
    bad["not an image file"].write_text("site notes, saved under the wrong name\n")
    bad["no mask found"].unlink()
    write_mask(bad["mask is 40x34 but image"], np.zeros((H + 4, W), np.uint8))
    return root, bad


def assert_all_three(lines: list[str], bad: dict[str, Path]) -> None:
    """``lines`` are exactly one line per bad file, in split order, each naming its file and cause."""
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in bad.values()], lines
    for line, cause in zip(lines, bad):
        assert cause in line, (cause, line)


def test_non_image_missing_mask_and_wrong_size_named_in_one_run(tmp_path):
    root, bad = make_deep_folder(tmp_path)
    dataset = FolderDataset(root, "train")  # the missing mask does not stop the reader
    assert len(dataset) == 33 and list(dataset.missing) == [str(bad["no mask found"])]
    for workers in (0, 2):
        with pytest.raises(DataCheckError) as info:
            check_dataset(dataset, workers=workers, cache=False)
        assert (info.value.failed, info.value.total) == (3, 33)
        assert_all_three(info.value.problems, bad)
        assert_all_three([line.strip() for line in str(info.value).splitlines()[1:]], bad)
    report = dataset_statistics(dataset, workers=0, remember=False)  # what check-data runs
    assert_all_three(report["problems"], bad)
    assert report["failed_samples"] == 3 and report["num_samples"] == 33
    with pytest.raises(DataCheckError) as info:  # what train and evaluate run before step 1
        check_before_run([dataset, FolderDataset(root, "val")], workers=0)
    assert_all_three(info.value.problems, bad)
    assert "--skip-data-check" in str(info.value)


def problem_lines(stderr: str) -> list[str]:
    """The problem lines of a DataCheckError as the CLI prints it (indented under the ``error:`` line)."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  /")]


def test_check_data_and_train_commands_name_all_three_before_step_1(tmp_path, run_cli):
    root, bad = make_deep_folder(tmp_path)
    out = tmp_path / "report"
    folder = ["--dataset", "folder", "--data-root", str(root)]
    proc = run_cli("check-data", *folder, "--out", str(out), check=False, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: 3 problem(s) in 3 of 33 samples" in proc.stderr, proc.stderr[-3000:]
    assert_all_three(problem_lines(proc.stderr), bad)
    assert_all_three(json.loads((out / "data_report.json").read_text())["problems"], bad)
    run = tmp_path / "run"
    proc = run_cli("train", *folder, "--out", str(run), *TRAIN_ARGS, check=False, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: 3 problem(s) in 3 of 35 samples" in proc.stderr, proc.stderr[-3000:]
    assert_all_three(problem_lines(proc.stderr), bad)
    assert not (run / "last").exists()
