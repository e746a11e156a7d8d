"""How published implementations name the tensors of our models (kept beside the models they describe).

Each :class:`ReferenceLayout` renames one of our ``state_dict`` keys to the key that a published
implementation uses for the same tensor, so :func:`refineseg.from_reference` loads its
checkpoints and :func:`refineseg.to_reference` writes ours in its layout:

* :data:`RESNET_LAYOUT`: RefineNet and Light-Weight RefineNet on ResNet, as ported to PyTorch by
  the authors (DrSleep/refinenet-pytorch, DrSleep/light-weight-refinenet; best-of-acrv keeps the
  same names): ``p_ims1d2_outl*_dimred``, ``adapt_stage*``, ``mflow_conv_g*``, ``clf_conv``.
* :data:`MOBILENET_LAYOUT`: Light-Weight RefineNet on MobileNetV2 (``layer1..8``, ``conv3..8``,
  ``crp1..4``, ``conv_adapt2..4``, ``segm``).
* :data:`SEED_LAYOUT`: the single-stage design of the founding document (``backbone.*`` in
  torchvision names, ``ResidualConvUnit``, ``MultiResolutionFusion``, ``ChainedResidualPool``,
  ``final``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Rule = tuple[str, Callable[[re.Match], str]]


@dataclass(frozen=True)
class ReferenceLayout:
    """A published implementation's names for one family of models.

    ``rename`` maps our key to theirs; ``classifier`` is their key of the classifier weight (its
    first dimension is the number of classes); tensors under ``unused_prefixes`` may be present
    in their checkpoints but compute nothing in the model (e.g. an ImageNet ``fc`` layer kept by a
    torchvision backbone) and are dropped on loading.
    """

    source: str
    rename: Callable[[str], str]
    classifier: str
    unused_prefixes: tuple[str, ...] = ()


def _apply_rules(key: str, rules: list[Rule]) -> str:
    for pattern, build in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return build(m)
    raise KeyError(f"no reference name for parameter {key!r}")


_RESNET_RULES: list[Rule] = [
    (r"encoder\.(.*)", lambda m: m[1]),
    (r"head\.conv\.(.*)", lambda m: f"clf_conv.{m[1]}"),
    (r"decoder\.laterals\.(\d+)\.(.*)", lambda m: f"p_ims1d2_outl{int(m[1]) + 1}_dimred.{m[2]}"),
    (
        r"decoder\.blocks\.(\d+)\.path_rcus\.0\.(\d+)\.conv_a\.(.*)",
        lambda m: f"adapt_stage{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv.{m[3]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.path_rcus\.0\.(\d+)\.conv_b\.(.*)",
        lambda m: f"adapt_stage{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv_relu_varout_dimred.{m[3]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.mrf\.convs\.0\.(.*)",
        lambda m: f"adapt_stage{int(m[1]) + 1}_b2_joint_varout_dimred.{m[2]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.mrf\.convs\.1\.(.*)",
        lambda m: f"mflow_conv_g{int(m[1])}_b3_joint_varout_dimred.{m[2]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.crp\.convs\.(\d+)\.(.*)",
        lambda m: f"mflow_conv_g{int(m[1]) + 1}_pool.0.{int(m[2]) + 1}_outvar_dimred.{m[3]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.out_rcus\.(\d+)\.conv_a\.(.*)",
        lambda m: f"mflow_conv_g{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv.{m[3]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.out_rcus\.(\d+)\.conv_b\.(.*)",
        lambda m: f"mflow_conv_g{int(m[1]) + 1}_b.0.{int(m[2]) + 1}_conv_relu_varout_dimred.{m[3]}",
    ),
]


def resnet_reference_key(key: str) -> str:
    """Our key -> the released (Light-Weight) RefineNet-ResNet key."""
    return _apply_rules(key, _RESNET_RULES)


# MobileNetV2 ``features`` index -> (reference ``layerN``, block index within it).
_MBV2_GROUP_OF_FEATURE = {0: (1, 0)}
for _group, _repeats in enumerate((1, 2, 3, 4, 3, 3, 1), start=2):
    for _block in range(_repeats):
        _MBV2_GROUP_OF_FEATURE[len(_MBV2_GROUP_OF_FEATURE)] = (_group, _block)

# (decoder block, MRF path) -> the reference conv's name.
_MBV2_DECODER_NAMES = {
    (0, 0): "conv8",
    (0, 1): "conv7",
    (1, 0): "conv6",
    (1, 1): "conv5",
    (1, 2): "conv_adapt4",
    (2, 0): "conv4",
    (2, 1): "conv_adapt3",
    (3, 0): "conv3",
    (3, 1): "conv_adapt2",
}


def _mbv2_backbone_key(m: re.Match) -> str:
    layer, block = _MBV2_GROUP_OF_FEATURE[int(m[1])]
    if layer == 1:  # the stem
        return f"layer1.{m[2]}"
    step = re.fullmatch(r"conv\.(\d+)\.(.*)", m[2])
    index, tail = int(step[1]), step[2]
    # Ours: conv.0 expand, conv.1 depthwise, conv.2 projection conv, conv.3 projection BN.
    # Theirs: output.0 expand, output.1 depthwise, output.2 = Sequential(projection conv, BN).
    if index >= 2:
        return f"layer{layer}.{block}.output.2.{index - 2}.{tail}"
    return f"layer{layer}.{block}.output.{index}.{tail}"


_MBV2_RULES: list[Rule] = [
    (r"encoder\.features\.(\d+)\.(.*)", _mbv2_backbone_key),
    (r"head\.conv\.(.*)", lambda m: f"segm.{m[1]}"),
    (
        r"decoder\.blocks\.(\d+)\.mrf\.convs\.(\d+)\.(.*)",
        lambda m: f"{_MBV2_DECODER_NAMES[int(m[1]), int(m[2])]}.{m[3]}",
    ),
    (
        r"decoder\.blocks\.(\d+)\.crp\.convs\.(\d+)\.(.*)",
        lambda m: f"crp{4 - int(m[1])}.0.{int(m[2]) + 1}_outvar_dimred.{m[3]}",
    ),
]


def mobilenet_reference_key(key: str) -> str:
    """Our key -> the released Light-Weight RefineNet-MobileNetV2 key."""
    return _apply_rules(key, _MBV2_RULES)


# The seed's RCU is Sequential(ReLU, conv, BN, ReLU, conv): our conv_a / bn / conv_b are 1 / 2 / 4.
_SEED_RCU_INDEX = {"conv_a": 1, "bn": 2, "conv_b": 4}
# The seed's head is Sequential(conv, BN, ReLU, conv).
_SEED_HEAD_INDEX = {"proj.0": 0, "proj.1": 1, "conv": 3}

_SEED_RULES: list[Rule] = [
    (r"encoder\.(.*)", lambda m: f"backbone.{m[1]}"),
    (
        r"decoder\.block\.path_rcus\.(\d+)\.0\.(conv_a|bn|conv_b)\.(.*)",
        lambda m: f"ResidualConvUnit.{m[1]}.{_SEED_RCU_INDEX[m[2]]}.{m[3]}",
    ),
    (r"decoder\.block\.mrf\.convs\.(\d+)\.(.*)", lambda m: f"MultiResolutionFusion.{m[1]}.0.{m[2]}"),
    # Entry 0 of the seed's ChainedResidualPool list is its ReLU, so the stages are 1..4.
    (r"decoder\.block\.crp\.convs\.(\d+)\.(.*)", lambda m: f"ChainedResidualPool.{int(m[1]) + 1}.1.{m[2]}"),
    (r"head\.(proj\.0|proj\.1|conv)\.(.*)", lambda m: f"final.{_SEED_HEAD_INDEX[m[1]]}.{m[2]}"),
]


def seed_reference_key(key: str) -> str:
    """Our key -> the founding document's single-stage RefineNet key."""
    return _apply_rules(key, _SEED_RULES)


RESNET_LAYOUT = ReferenceLayout(
    "DrSleep/refinenet-pytorch, DrSleep/light-weight-refinenet (ResNet)",
    resnet_reference_key,
    classifier="clf_conv.weight",
)
MOBILENET_LAYOUT = ReferenceLayout(
    "DrSleep/light-weight-refinenet (MobileNetV2)", mobilenet_reference_key, classifier="segm.weight"
)
SEED_LAYOUT = ReferenceLayout(
    "the founding document's single-stage RefineNet",
    seed_reference_key,
    classifier="final.3.weight",
    unused_prefixes=("backbone.fc.",),
)
