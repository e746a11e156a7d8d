"""Class names, colours and label-id tables of the supported public datasets."""

from __future__ import annotations

import numpy as np

from refineseg.utils.palette import Color, color_palette

# Tables of names and colours, kept as written (several per line):
# fmt: off
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
VOC_PALETTE = color_palette(len(VOC_CLASSES))

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
CITYSCAPES_PALETTE: list[Color] = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
#: Official Cityscapes labelId -> trainId for the 19 evaluated classes; all other ids are ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def cityscapes_lut(ignore_index: int = 255) -> np.ndarray:
    """256-entry uint8 table mapping Cityscapes labelIds to trainIds (unlisted ids -> ignore)."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


#: The 150 classes of the ADE20K SceneParsing benchmark (ADEChallengeData2016), in label order 1..150.
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
#: Generated palette: VOC colour map entries 1..150 (distinct, deterministic, never black).
ADE20K_PALETTE = color_palette(len(ADE20K_CLASSES) + 1)[1:]


def ade20k_lut() -> np.ndarray:
    """ADE20K annotation value -> class index: 0 (unlabelled) -> 255, k -> k - 1."""
    lut = (np.arange(256, dtype=np.int32) - 1).astype(np.uint8)  # 0 wraps to 255
    lut[255] = 255
    return lut


def zero_void_lut(ignore_index: int = 255) -> np.ndarray:
    """Annotation value -> class index for masks with 0 = unlabelled: 0 -> ``ignore_index``, k -> k - 1.

    Used by NYUDv2 (``labels40``), SUN RGB-D and PASCAL-Context-59; values above the class count
    stay out of range and are reported by the dataset's sample check.
    """
    lut = (np.arange(256, dtype=np.int32) - 1).astype(np.uint8)
    lut[0] = lut[255] = ignore_index
    return lut


#: NYUDv2 40-class task (Gupta et al., CVPR 2013), class order 1..40 of ``classMapping40.mat``.
NYUDV2_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]
NYUDV2_PALETTE = color_palette(len(NYUDV2_CLASSES) + 1)[1:]

#: SUN RGB-D 37-class task (Song et al., CVPR 2015), annotation values 1..37 (0 = unlabelled).
SUNRGBD_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower curtain",
    "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag",
]
SUNRGBD_PALETTE = color_palette(len(SUNRGBD_CLASSES) + 1)[1:]

#: PASCAL-Person-Part (Chen et al., CVPR 2014): background and six body parts, mask values 0..6.
PERSON_PART_CLASSES = [
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
]
PERSON_PART_PALETTE = color_palette(len(PERSON_PART_CLASSES))

#: PASCAL-Context, 59 most frequent classes plus background, in the order of the mmsegmentation
#: conversion (``SegmentationClassContext``: 0 = background, 1..59 sorted by original label id).
PASCAL_CONTEXT_CLASSES = [
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]
PASCAL_CONTEXT_PALETTE = color_palette(len(PASCAL_CONTEXT_CLASSES))

#: COCO instance category id -> VOC class index (1..20) for the 20 categories the two share.
COCO_TO_VOC = {
    5: 1, 2: 2, 16: 3, 9: 4, 44: 5, 6: 6, 3: 7, 17: 8, 62: 9, 21: 10,
    67: 11, 18: 12, 19: 13, 4: 14, 1: 15, 64: 16, 20: 17, 63: 18, 7: 19, 72: 20,
}
#: COCO's names of those categories (checked against the annotation file's ``categories``).
COCO_VOC_NAMES = {
    5: "airplane", 2: "bicycle", 16: "bird", 9: "boat", 44: "bottle", 6: "bus", 3: "car",
    17: "cat", 62: "chair", 21: "cow", 67: "dining table", 18: "dog", 19: "horse",
    4: "motorcycle", 1: "person", 64: "potted plant", 20: "sheep", 63: "couch", 7: "train", 72: "tv",
}

#: CamVid, the SegNet tutorial's 11-class version (Brostow et al., 2008); mask value 11 = void.
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
]
#: The colours CamVid's and SegNet's label images use for these classes.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]


def camvid_lut(ignore_index: int = 255) -> np.ndarray:
    """CamVid mask value -> class index: 0..10 stay, 11 (void) and anything above -> ``ignore_index``."""
    lut = np.full(256, ignore_index, np.uint8)
    lut[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES), dtype=np.uint8)
    return lut
# fmt: on
