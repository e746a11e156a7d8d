"""Every preset in configs/ loads, names a registered model and dataset, builds, and documents itself.

A preset's header comment names the data layout (``# Data layout: <file> § <heading>``) and the
commands that train and evaluate it (``# Train: refineseg train --config <this file> ...``,
``# Evaluate: refineseg evaluate ...``, lines continued with a trailing backslash); these are parsed
with the real command-line parser. Models are built on the ``meta`` device (shapes only, no memory).
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex

import pytest
import torch
import yaml
from helpers import ROOT

from refineseg.cli.app import build_parser
from refineseg.cli.evaluate import EvalConfig
from refineseg.data import (
    ADE20K_CLASSES,
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    DATASETS,
    NYUDV2_CLASSES,
    PASCAL_CONTEXT_CLASSES,
    PERSON_PART_CLASSES,
    SUNRGBD_CLASSES,
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
)
from refineseg.models import create_model, model_spec
from refineseg.training.config import TrainConfig
from refineseg.utils.config import build_config

PRESETS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))

# Class lists of the readers, and the class counts the papers use for these datasets.
CLASSES = {
    "voc": VOC_CLASSES,
    "coco_voc": VOC_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "ade20k": ADE20K_CLASSES,
    "nyudv2": NYUDV2_CLASSES,
    "person_part": PERSON_PART_CLASSES,
    "pascal_context": PASCAL_CONTEXT_CLASSES,
    "sunrgbd": SUNRGBD_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
    "camvid": CAMVID_CLASSES,
}
PAPER_CLASS_COUNTS = {
    "voc": 21,
    "coco_voc": 21,
    "cityscapes": 19,
    "ade20k": 150,
    "nyudv2": 40,
    "person_part": 7,
    "pascal_context": 60,
    "sunrgbd": 37,
    "synthetic": 6,
    "camvid": 11,  # SegNet's CamVid (not in the RefineNet papers)
}


def header(path: str) -> dict[str, str]:
    """The ``# Key: value`` lines of the leading comment block, continuation lines joined."""
    fields: dict[str, str] = {}
    key = None
    for line in (ROOT / path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        match = re.match(r"(Data layout|Train|Evaluate|Paper[^:]*):\s*(.*)", text)
        if match:
            key = "Paper" if match[1].startswith("Paper") else match[1]  # also "Paper, after stage 3:"
            fields[key] = match[2]
        elif key and fields[key].endswith("\\"):
            fields[key] = fields[key][:-1].rstrip() + " " + text
        else:
            key = None
    return fields


def parse_command(line: str, command: str) -> argparse.Namespace:
    argv = shlex.split(line)
    assert argv[:2] == ["refineseg", command], line
    return build_parser().parse_args(argv[1:])


@functools.cache
def output_shape(model: str, num_classes: int, output_stride: int) -> tuple[int, ...]:
    """Logit shape of ``model`` built on the meta device for a (1, 3, 64, 64) input."""
    with torch.device("meta"):
        net = create_model(model, num_classes=num_classes, output_stride=output_stride).eval()
        return tuple(net(torch.empty(1, 3, 64, 64)).shape)


def test_presets_found():
    assert len(PRESETS) >= 30 and "configs/lw_refinenet50_coco_sbd_voc/2_sbd.yaml" in PRESETS


@pytest.mark.parametrize("path", PRESETS)
def test_preset_loads_and_builds(path):
    config = build_config(TrainConfig, argparse.Namespace(), str(ROOT / path))  # unknown keys, types, bounds
    values = yaml.safe_load((ROOT / path).read_text())
    assert set(values) <= set(TrainConfig.__dataclass_fields__)
    assert all(not isinstance(v, str) or not re.fullmatch(r"[\d.]+e-?\d+", v) for v in values.values()), (
        "a number PyYAML reads as a string (write 0.00005, not 5e-05)"
    )
    model_spec(config.model)
    assert config.dataset in DATASETS
    num_classes = len(CLASSES[config.dataset])
    assert num_classes == PAPER_CLASS_COUNTS[config.dataset]
    assert output_shape(config.model, num_classes, config.output_stride) == (1, num_classes, 64, 64)


@pytest.mark.parametrize("path", PRESETS)
def test_preset_documents_layout_and_commands(path):
    config = build_config(TrainConfig, argparse.Namespace(), str(ROOT / path))
    fields = header(path)
    layout = fields["Data layout"]
    if config.dataset == "synthetic":
        assert layout.startswith("none")
    else:
        doc, _, heading = layout.partition(" § ")
        assert f"`{config.dataset}`" in heading, layout
        headings = [line.lstrip("#").strip() for line in (ROOT / doc).read_text().splitlines() if line.startswith("#")]
        assert heading in headings, f"{doc} has no section {heading!r}"

    train = parse_command(fields["Train"], "train")
    assert train.config == path
    evaluate = parse_command(fields["Evaluate"], "evaluate")
    eval_config = build_config(EvalConfig, evaluate)
    assert eval_config.dataset == config.dataset and eval_config.split == config.val_split
    assert eval_config.checkpoint == f"{config.out}/best"
    if config.dataset != "synthetic":
        assert fields["Paper"], "name the paper's number (or say there is none)"


def test_presets_write_to_different_folders():
    outs = [build_config(TrainConfig, argparse.Namespace(), str(ROOT / p)).out for p in PRESETS]
    assert len(set(outs)) == len(outs)


def test_stages_start_from_the_previous_stage():
    staged = [p for p in PRESETS if p.count("/") == 2]
    folders = sorted({p.rsplit("/", 1)[0] for p in staged})
    assert len(folders) == 4
    for folder in folders:
        stages = sorted(p for p in staged if p.startswith(folder + "/"))
        assert [s.rsplit("/", 1)[1] for s in stages] == ["1_coco.yaml", "2_sbd.yaml", "3_voc.yaml"]
        configs = [build_config(TrainConfig, argparse.Namespace(), str(ROOT / s)) for s in stages]
        assert [c.dataset for c in configs] == ["coco_voc", "voc", "voc"]
        assert configs[0].lr > configs[1].lr > configs[2].lr
        assert configs[0].init_from is None
        for previous, stage in zip(configs, configs[1:]):
            assert stage.init_from == f"{previous.out}/best" and stage.model == previous.model


def test_every_paper_preset_is_in_the_reproducing_table():
    table = (ROOT / "docs" / "reproducing.md").read_text()
    missing = [p for p in PRESETS if p != "configs/demo.yaml" and f"`{p}`" not in table]
    assert not missing
