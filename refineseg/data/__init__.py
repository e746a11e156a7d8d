"""Data loading: image/mask I/O, datasets (VOC, Cityscapes, ADE20K, NYUDv2, PASCAL-Person-Part,
PASCAL-Context, SUN RGB-D, COCO as VOC, folders, synthetic), transforms.

Datasets yield ``(image, mask)``; with a transform from :mod:`refineseg.data.transforms` these are
a normalised float32 (3, H, W) tensor and an int64 (H, W) tensor of class indices, 255 = ignore.
"""

from refineseg.data.benchmarks import (
    SUNRGBD,
    CamVid,
    NYUDv2,
    PascalContext,
    PascalContext59,
    PascalPersonPart,
    prepare_nyudv2,
)
from refineseg.data.build import DATASETS, build_dataset
from refineseg.data.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    CITYSCAPES_PALETTE,
    COCO_TO_VOC,
    NYUDV2_CLASSES,
    NYUDV2_PALETTE,
    PASCAL_CONTEXT_CLASSES,
    PASCAL_CONTEXT_PALETTE,
    PERSON_PART_CLASSES,
    PERSON_PART_PALETTE,
    SUNRGBD_CLASSES,
    SUNRGBD_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
)
from refineseg.data.coco import COCOVoc
from refineseg.data.datasets import ADE20K, Cityscapes, SegmentationDataset, VOCSegmentation
from refineseg.data.folder import FolderDataset, load_classes_file, parse_classes
from refineseg.data.io import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    read_image,
    read_large_image,
    read_mask,
    unlimited_pixels,
    write_image,
    write_label_png,
    write_label_tiff,
)
from refineseg.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    SyntheticSegmentation,
    make_synthetic_sample,
    write_synthetic,
)
from refineseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PairTransform,
    denormalize,
    eval_transform,
    normalize,
    train_transform,
)

__all__ = [
    "IMAGE_SUFFIXES", "TIFF_SUFFIXES", "read_image", "read_mask", "read_large_image", "unlimited_pixels", "write_image", "write_label_png",
    "write_label_tiff",
    "SegmentationDataset", "VOCSegmentation", "Cityscapes", "ADE20K", "FolderDataset",
    "NYUDv2", "prepare_nyudv2", "PascalPersonPart", "PascalContext", "PascalContext59", "SUNRGBD", "COCOVoc", "CamVid",
    "SyntheticSegmentation", "make_synthetic_sample", "write_synthetic", "build_dataset", "DATASETS",
    "load_classes_file", "parse_classes",
    "train_transform", "eval_transform", "PairTransform", "normalize", "denormalize",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "VOC_CLASSES", "VOC_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CITYSCAPES_LABEL_TO_TRAIN",
    "ADE20K_CLASSES", "ADE20K_PALETTE", "CAMVID_CLASSES", "CAMVID_PALETTE", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE",
    "NYUDV2_CLASSES", "NYUDV2_PALETTE", "SUNRGBD_CLASSES", "SUNRGBD_PALETTE", "PERSON_PART_CLASSES",
    "PERSON_PART_PALETTE", "PASCAL_CONTEXT_CLASSES", "PASCAL_CONTEXT_PALETTE", "COCO_TO_VOC",
]
