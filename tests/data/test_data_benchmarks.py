"""Readers of RefineNet's benchmark datasets, each on a tiny fixture written in the distribution's layout.

Expected masks are computed here in numpy from the raw values the fixture wrote, never by the
reader's own tables; COCO masks are drawn independently (slices, half-planes, a test-side RLE encoder).
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from refineseg.data import (
    COCO_TO_VOC,
    NYUDV2_CLASSES,
    NYUDV2_PALETTE,
    PASCAL_CONTEXT_CLASSES,
    PERSON_PART_CLASSES,
    PERSON_PART_PALETTE,
    SUNRGBD,
    SUNRGBD_CLASSES,
    VOC_CLASSES,
    COCOVoc,
    NYUDv2,
    PascalContext,
    PascalContext59,
    PascalPersonPart,
    build_dataset,
    prepare_nyudv2,
    write_label_png,
)
from refineseg.data.check import check_dataset
from refineseg.data.coco import decode_rle, fill_polygon, rle_counts_from_string
from refineseg.errors import DataCheckError, DataError

RNG = np.random.default_rng(7)
H, W = 12, 16


def rgb(h: int = H, w: int = W) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, arr, palette=None) -> None:
    """An image (JPEG or PNG by suffix), a grey PNG mask, or with ``palette`` a palette PNG mask."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if palette is not None:
        return write_label_png(path, arr, palette)
    Image.fromarray(arr).save(path, **({"quality": 95} if str(path).endswith(".jpg") else {}))


def write_lines(path, lines) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


@contextlib.contextmanager
def raises_naming(path, match: str | None = None):
    """pytest.raises(DataError) whose one-line message (or, for missing files, one problem line) names ``path``."""
    with pytest.raises(DataError) as info:
        yield info
    lines = info.value.problems if isinstance(info.value, DataCheckError) else [str(info.value)]
    msg = next((line for line in lines if str(path) in line), str(info.value))
    assert str(path) in msg and "\n" not in msg, msg
    assert match is None or match in msg, msg


def check_split(ds, n: int, truth: dict, names: list[str]) -> None:
    """Length, classes, and every sample's mask against ``truth[stem]``; image shape matches."""
    assert len(ds) == n and ds.class_names == names and ds.num_classes == len(names)
    for k in range(len(ds)):
        image, mask = ds[k]
        expected = truth[ds.sample_name(k)]
        assert image.shape == (*expected.shape, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------------- NYUDv2
def write_nyu_release(tmp_path, n: int = 5):
    """nyu_depth_v2_labeled.mat (HDF5, transposed as MATLAB stores it), classMapping40.mat, splits.mat."""
    h5py = pytest.importorskip("h5py")
    scipy_io = pytest.importorskip("scipy.io")
    images = RNG.integers(0, 256, (n, H, W, 3), dtype=np.uint8)  # as a user sees them: (N, H, W, 3)
    labels = RNG.integers(0, 895, (n, H, W)).astype(np.uint16)
    labels[:, 0, :] = 0  # unlabelled rows
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # MATLAB 480x640x3xN -> h5py (N, 3, W, H)
        f["labels"] = labels.transpose(0, 2, 1)  # MATLAB 480x640xN   -> h5py (N, W, H)
    map_class = RNG.integers(1, 41, 894).astype(np.float64)
    map_class[[3, 100]] = 0  # raw classes without a 40-class counterpart
    scipy_io.savemat(
        tmp_path / "classMapping40.mat",
        {"mapClass": map_class[None, :], "className": np.array([NYUDV2_CLASSES], dtype=object)},
    )
    scipy_io.savemat(
        tmp_path / "splits.mat", {"trainNdxs": np.array([[1.0], [3.0], [4.0]]), "testNdxs": np.array([[2.0], [5.0]])}
    )
    return images, labels, map_class


def test_nyudv2_prepare_from_official_mat(tmp_path):
    (images, labels, map_class), out = write_nyu_release(tmp_path), tmp_path / "nyud"
    counts = prepare_nyudv2(
        tmp_path / "nyu_depth_v2_labeled.mat", tmp_path / "classMapping40.mat", tmp_path / "splits.mat", out
    )
    assert counts == {"train": 3, "val": 2}
    assert (out / "train.nyu").read_text().splitlines()[1] == "train_images/000003.png\ttrain_labels/000003.png"
    # Independent mapping: 0 -> 255, raw k -> mapClass[k - 1] - 1, mapClass 0 -> 255.
    mapped = np.where(labels == 0, 0, map_class.astype(int)[np.maximum(labels.astype(int), 1) - 1])
    truth = {f"{i + 1:06d}": np.where(mapped[i] == 0, 255, mapped[i] - 1) for i in range(len(labels))}
    check_split(NYUDv2(out, "train"), 3, truth, NYUDV2_CLASSES)
    test = build_dataset("nyudv2", out, "test")
    check_split(test, 2, truth, NYUDV2_CLASSES)
    assert [test.sample_name(k) for k in range(2)] == ["000002", "000005"]
    np.testing.assert_array_equal(test[1][0], images[4])  # lossless PNG, un-transposed
    assert NYUDv2(out, "val").samples == test.samples


def test_nyudv2_conversion_errors(tmp_path):
    write_nyu_release(tmp_path)
    mat, mapping, splits = (tmp_path / n for n in ("nyu_depth_v2_labeled.mat", "classMapping40.mat", "splits.mat"))
    with raises_naming(tmp_path / "nope.mat", "not found"):
        prepare_nyudv2(mat, tmp_path / "nope.mat", splits, tmp_path / "out")
    with raises_naming(mat, "not a MATLAB v5"):  # the HDF5 file where the v5 mapping belongs
        prepare_nyudv2(mat, mat, splits, tmp_path / "out")
    with raises_naming(splits, "'mapClass'"):
        prepare_nyudv2(mat, splits, splits, tmp_path / "out")
    with raises_naming(mapping, "not a MATLAB v7.3"):
        prepare_nyudv2(mapping, mapping, splits, tmp_path / "out")
    import scipy.io

    scipy.io.savemat(tmp_path / "short.mat", {"mapClass": np.ones((1, 10))})  # raw labels go up to 894
    with raises_naming(mat, "short.mat"):
        prepare_nyudv2(mat, tmp_path / "short.mat", splits, tmp_path / "out")
    with raises_naming(tmp_path, "prepare_nyudv2"):  # the raw release is not a readable layout
        NYUDv2(tmp_path, "train")


def test_nyudv2_folder_layouts(tmp_path):
    # Light-Weight RefineNet's layout: tab-separated pairs, labels already 0..39 with 255 = void.
    lw = tmp_path / "lw"
    truth, lines = {}, {"train": [], "val": []}
    for split, stems in (("train", ["000003", "000004"]), ("val", ["000001"])):
        for s in stems:
            labels = RNG.integers(0, 40, (H, W)).astype(np.uint8)
            labels[2, :5] = 255
            save(lw / f"{split}_images/{s}.png", rgb())
            save(lw / f"{split}_labels/{s}.png", labels, NYUDV2_PALETTE)
            truth[s] = labels
            lines[split].append(f"{split}_images/{s}.png\t{split}_labels/{s}.png")
        write_lines(lw / f"{split}.nyu", lines[split])
    check_split(NYUDv2(lw, "train"), 2, truth, NYUDV2_CLASSES)
    check_split(NYUDv2(lw, "test"), 1, truth, NYUDV2_CLASSES)
    os.remove(lw / "val.nyu")
    with raises_naming(lw / "val.nyu", "split file"):
        NYUDv2(lw, "val")
    # images/ + labels40/ (0 = void, 1..40) with train.txt / test.txt of names.
    l40, truth = tmp_path / "l40", {}
    for split, stems in (("train", ["0003", "0004"]), ("test", ["0001", "0002"])):
        write_lines(l40 / f"{split}.txt", stems)
        for s in stems:
            raw = RNG.integers(0, 41, (H, W)).astype(np.uint8)
            save(l40 / f"images/{s}.jpg", rgb())
            save(l40 / f"labels40/{s}.png", raw)
            truth[s] = np.where(raw == 0, 255, raw.astype(int) - 1)
    check_split(NYUDv2(l40, "train"), 2, truth, NYUDV2_CLASSES)
    check_split(build_dataset("nyudv2", l40, "val"), 2, truth, NYUDV2_CLASSES)
    save(l40 / "labels40/0004.png", np.full((H, W), 41, np.uint8))  # one past the 40 classes
    with raises_naming(l40 / "labels40/0004.png", "out of range"):
        NYUDv2(l40, "train")[1]
    os.remove(l40 / "images/0001.jpg")
    with raises_naming(l40 / "images/0001.png", "missing"):  # named by the data check, with every other bad file
        check_dataset(NYUDv2(l40, "test"), workers=0, cache=False)
    with pytest.raises(DataError, match="unknown NYUDv2 split"):
        NYUDv2(l40, "trainval")
    with raises_naming(tmp_path, "not an NYUDv2 folder"):
        NYUDv2(tmp_path, "train")


# --------------------------------------------------------------------------- PASCAL-Person-Part
def make_person_part(root, ids_by_split):
    """DeepLab's pascal_person_part/ release next to VOCdevkit/VOC2010/JPEGImages."""
    base, truth = root / "pascal_person_part", {}
    lists = base / "pascal_person_part_trainval_list"
    for split, ids in ids_by_split.items():
        write_lines(lists / f"{split}_id.txt", ids)
        write_lines(lists / f"{split}.txt", [f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png" for i in ids])
        for i in ids:
            parts = RNG.integers(0, 7, (H, W)).astype(np.uint8)
            save(root / "VOCdevkit/VOC2010/JPEGImages" / f"{i}.jpg", rgb())
            save(base / "pascal_person_part_gt" / f"{i}.png", parts, PERSON_PART_PALETTE)
            truth[i] = parts
    return base, truth


def test_person_part(tmp_path):
    base, truth = make_person_part(
        tmp_path, {"train": ["2008_000003", "2008_000008"], "val": ["2008_000026", "2008_000041", "2008_000070"]}
    )
    check_split(PascalPersonPart(tmp_path, "train"), 2, truth, PERSON_PART_CLASSES)
    check_split(build_dataset("person_part", base, "val"), 3, truth, PERSON_PART_CLASSES)
    assert PERSON_PART_CLASSES[1:] == ["head", "torso", "upper arms", "lower arms", "upper legs", "lower legs"]
    before = PascalPersonPart(tmp_path, "val").samples
    for split in ("train", "val"):  # the pair lists alone give the same samples
        os.remove(base / f"pascal_person_part_trainval_list/{split}_id.txt")
    assert PascalPersonPart(tmp_path, "val").samples == before
    os.rename(base / "pascal_person_part_gt", base / "SegmentationPart")  # as the lists name it
    check_split(PascalPersonPart(base, "train"), 2, truth, PERSON_PART_CLASSES)
    os.remove(base / "SegmentationPart/2008_000041.png")
    with raises_naming(base / "SegmentationPart/2008_000041.png", "missing"):
        check_dataset(PascalPersonPart(tmp_path, "val"), workers=0, cache=False)
    with pytest.raises(DataError, match="unknown PASCAL-Person-Part split"):
        PascalPersonPart(tmp_path, "test")
    os.remove(base / "pascal_person_part_trainval_list/train.txt")
    with raises_naming(base / "pascal_person_part_trainval_list/train_id.txt", "split file"):
        PascalPersonPart(tmp_path, "train")
    os.rename(tmp_path / "VOCdevkit", tmp_path / "elsewhere")
    with raises_naming(base, "JPEGImages"):
        PascalPersonPart(tmp_path, "val")


# ------------------------------------------------------------------------------ PASCAL-Context
def make_context(root, ids_by_split):
    base, raw = root / "VOCdevkit" / "VOC2010", {}
    for split, ids in ids_by_split.items():
        write_lines(base / "ImageSets/SegmentationContext" / f"{split}.txt", ids)
        for i in ids:
            labels = RNG.integers(0, 60, (H, W)).astype(np.uint8)
            labels[0, :4] = 0
            save(base / "JPEGImages" / f"{i}.jpg", rgb())
            save(base / "SegmentationClassContext" / f"{i}.png", labels)
            raw[i] = labels
    return base, raw


def test_pascal_context_60_and_59(tmp_path):
    base, raw = make_context(
        tmp_path, {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000019", "2008_000021"]}
    )
    assert len(PASCAL_CONTEXT_CLASSES) == 60 and PASCAL_CONTEXT_CLASSES[:3] == ["background", "aeroplane", "bag"]
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        check_split(PascalContext(root, "train"), 3, raw, PASCAL_CONTEXT_CLASSES)
    check_split(build_dataset("pascal_context", tmp_path, "val"), 2, raw, PASCAL_CONTEXT_CLASSES)
    shifted = {i: np.where(m == 0, 255, m.astype(int) - 1) for i, m in raw.items()}
    check_split(build_dataset("pascal_context59", tmp_path, "val"), 2, shifted, PASCAL_CONTEXT_CLASSES[1:])
    assert PascalContext59(base, "train").palette == PascalContext(tmp_path, "val").palette[1:]
    save(base / "SegmentationClassContext/2008_000021.png", np.full((H, W), 60, np.uint8))
    with raises_naming(base / "SegmentationClassContext/2008_000021.png", "out of range"):
        PascalContext(tmp_path, "val")[1]
    with raises_naming(base / "ImageSets/SegmentationContext/test.txt", "split file"):
        PascalContext(tmp_path, "test")
    with raises_naming(tmp_path / "VOCdevkit/VOC2010/ImageSets", "not a PASCAL-Context folder"):
        PascalContext(tmp_path / "VOCdevkit/VOC2010/ImageSets", "train")


# ------------------------------------------------------------------------------------ SUN RGB-D
def test_sunrgbd_release_layout(tmp_path):
    raw_by_label = {}
    for number in (1, 2, 3, 5051, 5052):  # labels 1..5050 are the test images', 5051.. the train images'
        raw_by_label[number] = RNG.integers(0, 38, (H, W)).astype(np.uint8)
        save(tmp_path / f"sunrgbd_train_test_labels/img-{number:06d}.png", raw_by_label[number])
    for k in (1, 2):
        save(tmp_path / f"SUNRGBD-train_images/img-{k:06d}.jpg", rgb())
    for k in (1, 2, 3):
        save(tmp_path / f"SUNRGBD-test_images/img-{k:06d}.jpg", rgb())
    mapped = {n: np.where(m == 0, 255, m.astype(int) - 1) for n, m in raw_by_label.items()}
    train = SUNRGBD(tmp_path, "train")
    check_split(train, 2, {"img-000001": mapped[5051], "img-000002": mapped[5052]}, SUNRGBD_CLASSES)
    assert train.samples[1][1].endswith("img-005052.png")
    test = build_dataset("sunrgbd", tmp_path, "test")
    check_split(test, 3, {f"img-{k:06d}": mapped[k] for k in (1, 2, 3)}, SUNRGBD_CLASSES)
    assert SUNRGBD_CLASSES[23:25] == ["fridge", "tv"] and len(SUNRGBD_CLASSES) == 37
    os.remove(tmp_path / "sunrgbd_train_test_labels/img-005052.png")
    with raises_naming(tmp_path / "sunrgbd_train_test_labels/img-005052.png", "missing"):
        check_dataset(SUNRGBD(tmp_path, "train"), workers=0, cache=False)
    with raises_naming(tmp_path / "SUNRGBD-test_images" / "SUNRGBD-train_images", "not found"):
        SUNRGBD(tmp_path / "SUNRGBD-test_images", "train")


def test_sunrgbd_list_layout(tmp_path):
    truth = {}
    for split, n in (("train", 2), ("test", 1)):
        lines = []
        for k in range(1, n + 1):
            raw = RNG.integers(0, 38, (H, W)).astype(np.uint8)
            save(tmp_path / f"image/{split}/img-{k:06d}.jpg", rgb())
            save(tmp_path / f"label37/{split}/img37labels-{k:06d}.png", raw)
            truth[f"{split}{k}"] = np.where(raw == 0, 255, raw.astype(int) - 1)
            lines.append(
                f"image/{split}/img-{k:06d}.jpg depth/{split}/{k:08d}.png label37/{split}/img37labels-{k:06d}.png"
            )
        write_lines(tmp_path / f"{split}37.txt", lines)
    ds = SUNRGBD(tmp_path, "train")
    assert len(ds) == 2 and np.array_equal(ds[1][1], truth["train2"])
    ds = SUNRGBD(tmp_path, "val")  # the 5050 test images are the usual validation set
    assert len(ds) == 1 and np.array_equal(ds[0][1], truth["test1"])


# ------------------------------------------------------------------------------- COCO -> VOC
def encode_rle_string(counts: list[int]) -> str:
    """COCO's string RLE encoder (maskApi rleToString), written here to make fixtures."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def mask_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a bool mask, starting with a run of zeros."""
    flat = mask.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def test_rle_decoding_hand_made_examples():
    assert rle_counts_from_string("32T3V1") == [3, 2, 100, 40]  # 100 needs two groups; 40 is 38 more than 2
    assert rle_counts_from_string("5:2I") == [5, 10, 2, 3]  # 'I' = -7: 3 is 7 less than 10
    expected = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], bool)  # runs go down the columns
    np.testing.assert_array_equal(decode_rle([2, 3, 7], 3, 4), expected)
    np.testing.assert_array_equal(decode_rle(encode_rle_string([2, 3, 7]), 3, 4), expected)
    with pytest.raises(ValueError, match="add up"):
        decode_rle([2, 3], 3, 4)
    blob = RNG.random((9, 7)) > 0.5
    assert np.array_equal(decode_rle(encode_rle_string(mask_runs(blob)), 9, 7), blob)
    shape = np.zeros((40, 30), bool)  # and a string that pycocotools' mask.encode wrote for this shape
    shape[5:30, 3:25], shape[10:12, :], shape[35:, 28:] = True, False, True
    text = "m352" + "==CC" * 21 + "=S5CnK0"
    np.testing.assert_array_equal(decode_rle(text, 40, 30), shape)


def test_polygon_fill_uses_pixel_centres():
    mask, expected = np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint8)
    fill_polygon(mask, [2, 1, 7, 1, 7, 5, 2, 5], 3)  # x 2..7, y 1..5: pixels 2..6 x 1..4
    expected[1:5, 2:7] = 3
    np.testing.assert_array_equal(mask, expected)
    tri, pts = np.zeros((10, 12), np.uint8), [(0.3, 0.2), (11.1, 9.4), (0.6, 8.7)]
    fill_polygon(tri, np.ravel(pts), 1)
    yy, xx = np.mgrid[0:10, 0:12] + 0.5
    inside = np.ones((10, 12), bool)
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):  # same side of every edge as the centroid (4, 6.1)
        inside &= ((bx - ax) * (yy - ay) - (by - ay) * (xx - ax)) * ((bx - ax) * (6.1 - ay) - (by - ay) * (4 - ax)) > 0
    np.testing.assert_array_equal(tri == 1, inside)


def make_coco(root):
    """val2017 with 3 images: polygons + uncompressed-RLE crowd, a compressed RLE, only a non-VOC object."""
    h, w = 20, 24
    person = [2.0, 2.0, 18.0, 2.0, 18.0, 16.0, 2.0, 16.0]  # rectangle x 2..18, y 2..16
    dog = [4.0, 6.0, 12.0, 6.0, 4.0, 14.0]  # right triangle on top of the person
    light = [10.0, 3.0, 16.0, 3.0, 16.0, 9.0, 10.0, 9.0]  # traffic light (not VOC) on the person
    crowd = np.zeros((h, w), bool)
    crowd[12:20, 14:24] = True  # crowd of people, partly under the person
    cat = np.zeros((h, w), bool)
    cat[3:9, 5:20] = True
    cat[9:11, 0:3] = True
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i in (10, 11, 12)]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 18, "iscrowd": 0, "area": 32.0, "segmentation": [dog]},
        {"id": 2, "image_id": 10, "category_id": 1, "iscrowd": 0, "area": 224.0, "segmentation": [person]},
        {"id": 3, "image_id": 10, "category_id": 10, "iscrowd": 0, "area": 36.0, "segmentation": [light]},
        {
            "id": 4,
            "image_id": 10,
            "category_id": 1,
            "iscrowd": 1,
            "area": 80.0,
            "segmentation": {"counts": mask_runs(crowd), "size": [h, w]},
        },
        {
            "id": 5,
            "image_id": 11,
            "category_id": 17,
            "iscrowd": 0,
            "area": 96.0,
            "segmentation": {"counts": encode_rle_string(mask_runs(cat)), "size": [h, w]},
        },
        {"id": 6, "image_id": 12, "category_id": 10, "iscrowd": 0, "area": 36.0, "segmentation": [light]},
    ]
    categories = [
        {"id": 1, "name": "person"},
        {"id": 10, "name": "traffic light"},
        {"id": 17, "name": "cat"},
        {"id": 18, "name": "dog"},
    ]
    for image in images:
        save(root / "val2017" / image["file_name"], rgb(h, w))
    os.makedirs(root / "annotations", exist_ok=True)
    data = {"images": images, "annotations": anns, "categories": categories}
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    # Independently drawn truth: crowd ignored, then the person, then the dog; the light is background.
    first = np.zeros((h, w), np.uint8)
    first[crowd] = 255
    first[2:16, 2:18] = VOC_CLASSES.index("person")
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    first[(xx > 4) & (yy > 6) & (xx - 4 < 14 - yy)] = VOC_CLASSES.index("dog")  # x + y < 18
    second = np.where(cat, VOC_CLASSES.index("cat"), 0).astype(np.uint8)
    return data, {"000000000010": first, "000000000011": second, "000000000012": np.zeros((h, w), np.uint8)}


def test_coco_voc_masks(tmp_path, monkeypatch):
    data, truth = make_coco(tmp_path)
    ds = COCOVoc(tmp_path, "val")
    check_split(ds, 2, truth, VOC_CLASSES)  # image 12 holds no VOC object
    assert VOC_CLASSES[COCO_TO_VOC[5]] == "aeroplane" and VOC_CLASSES[COCO_TO_VOC[72]] == "tvmonitor"
    everything = build_dataset("coco_voc", tmp_path, "val2017", keep_all=True)
    check_split(everything, 3, truth, VOC_CLASSES)
    # The data check stats and decodes through read_mask: it passes, and the cache knows the file.
    from refineseg.data.check import check_dataset

    monkeypatch.setenv("REFINESEG_HOME", str(tmp_path / "home"))
    assert check_dataset(ds, workers=0).total == 2
    # A second split beside it: train2017.
    save(tmp_path / "train2017/000000000020.jpg", rgb(20, 24))
    train = {
        "images": [{"id": 20, "file_name": "000000000020.jpg", "height": 20, "width": 24}],
        "annotations": [
            {
                "id": 9,
                "image_id": 20,
                "category_id": 17,
                "iscrowd": 0,
                "area": 4.0,
                "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]],
            }
        ],
        "categories": data["categories"],
    }
    (tmp_path / "annotations/instances_train2017.json").write_text(json.dumps(train))
    image, mask = COCOVoc(tmp_path, "train")[0]
    assert image.shape == (20, 24, 3) and mask.sum() == 4 * VOC_CLASSES.index("cat")


def test_coco_voc_errors(tmp_path):
    data, _ = make_coco(tmp_path)
    ann_file = tmp_path / "annotations/instances_val2017.json"
    with raises_naming(tmp_path / "train2017", "not found"):
        COCOVoc(tmp_path, "train")
    data["annotations"][4]["segmentation"]["counts"] = "32T3V1"  # runs do not fill the image
    ann_file.write_text(json.dumps(data))
    with raises_naming(ann_file, "image id 11"):
        COCOVoc(tmp_path, "val")[1]
    data["categories"][2]["name"] = "kitten"
    ann_file.write_text(json.dumps(data))
    with raises_naming(ann_file, "'kitten'"):
        COCOVoc(tmp_path, "val")
    ann_file.write_text("{not json")
    with raises_naming(ann_file, "cannot read"):
        COCOVoc(tmp_path, "val")
    os.remove(ann_file)
    with raises_naming(ann_file, "not found"):
        COCOVoc(tmp_path, "val")
    make_coco(tmp_path)
    os.remove(tmp_path / "val2017/000000000011.jpg")
    with raises_naming(tmp_path / "val2017/000000000011.jpg", "missing"):
        COCOVoc(tmp_path, "val")
