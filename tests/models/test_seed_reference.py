"""``seed_refinenet*`` computes what the founding document's code computes, from the same weights.

The module below re-implements the document's single-stage RefineNet as that code is written
(nn.Modules, a ResNet in torchvision's layout), quirks included: its ``ChainedResidualPool``
subclasses ``nn.ModuleList`` and assigns ``self.relu`` before appending the four pooling stages,
so the ReLU is the list's entry 0 and ``for stage in self`` runs it as an extra first stage. It
imports nothing from refineseg. ``refineseg.from_reference(state_dict, "seed_refinenet*")`` must
consume every key of its ``state_dict`` and give the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_state
from torch import nn

import refineseg

NUM_CLASSES = 21
LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# ---------------------------------------------------------------------------------------------
# The document's code, re-implemented (ResNet with torchvision's module names)


class TorchvisionBottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet(nn.Module):
    def __init__(self, layers, with_fc: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for b in range(blocks):
                stage.append(TorchvisionBottleneck(inplanes, planes, stride=2 if (i > 0 and b == 0) else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        if with_fc:  # torchvision's ImageNet classifier: in the state_dict, never used for segmentation
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, 1000)


class ChainedResidualPool(nn.ModuleList):
    """As the document writes it: ``self.relu`` registers first, so it is iterated as stage 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        for _ in range(4):
            self.append(nn.Sequential(nn.MaxPool2d(5, 1, 2), nn.Conv2d(channels, channels, 3, 1, 1, bias=False)))

    def forward(self, x):
        x = self.relu(x)
        path = x
        for stage in self:
            path = stage(path)
            x = x + path
        return x


class DocumentRefineNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, with_fc: bool = True) -> None:
        super().__init__()
        self.backbone = TorchvisionResNet(LAYERS[depth], with_fc)
        widths = (256, 512, 1024, 2048)
        self.ResidualConvUnit = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(c, c, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, 1, 1, bias=False),
            )
            for c in widths
        )
        self.MultiResolutionFusion = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, 256, 3, 1, 1, bias=True),
                nn.Upsample(scale_factor=2**i, mode="bilinear", align_corners=True),
            )
            for i, c in enumerate(widths)
        )
        self.ChainedResidualPool = ChainedResidualPool(256)
        self.final = nn.Sequential(
            nn.Conv2d(256, 128, 3, 1, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, num_classes, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        levels = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            levels.append(x)
        fused = 0
        for level, rcu, mrf in zip(levels, self.ResidualConvUnit, self.MultiResolutionFusion):
            fused = fused + mrf(level + rcu(level))
        y = self.ChainedResidualPool(fused)
        y = F.interpolate(y, scale_factor=4, mode="bilinear", align_corners=True)
        return self.final(y)


def document_model(depth: int, with_fc: bool, seed: int) -> DocumentRefineNet:
    model = DocumentRefineNet(depth, NUM_CLASSES, with_fc)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(random_state(shapes, seed=seed))
    return model.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.slow
@pytest.mark.parametrize("depth,with_fc", [(101, True), (50, False)], ids=["101-with-fc", "50-no-fc"])
def test_seed_model_equals_the_documents_code(depth, with_fc):
    reference = document_model(depth, with_fc, seed=depth)
    state = reference.state_dict()
    model = refineseg.from_reference(state, f"seed_refinenet{depth}").eval()  # strict: every key consumed
    assert model.num_classes == NUM_CLASSES

    used = {k for k in state if not k.startswith("backbone.fc.")}
    assert set(refineseg.to_reference(model)) == used
    for key, tensor in refineseg.to_reference(model).items():
        assert torch.equal(tensor, state[key]), key

    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(7))  # sides divisible by 32
    with torch.no_grad():
        expected = reference(x)
        ours = model(x)
        assert torch.isfinite(expected).all() and expected.std() > 0
        assert ours.shape == expected.shape == (2, NUM_CLASSES, 64, 96)
        assert relative_error(ours, expected) <= 1e-5

        # The comparison sees the quirk: the clean CRP (the default elsewhere) is far off.
        model.decoder.block.crp.relu_stage = False
        assert relative_error(model(x), expected) > 1e-2


def test_seed_layout_keys_cover_the_model():
    with torch.device("meta"):
        model = refineseg.create_model("seed_refinenet152", num_classes=5)
    mapping = refineseg.models.reference_key_map(model)
    assert len(set(mapping.values())) == len(mapping)
    crp = sorted(v for v in mapping.values() if v.startswith("ChainedResidualPool"))
    assert crp == [f"ChainedResidualPool.{i}.1.weight" for i in range(1, 5)]
    assert {v.split(".")[0] for v in mapping.values()} == {
        "backbone",
        "ResidualConvUnit",
        "MultiResolutionFusion",
        "ChainedResidualPool",
        "final",
    }
    assert (
        mapping["head.conv.weight"] == "final.3.weight" and mapping["head.proj.1.running_var"] == "final.1.running_var"
    )
    assert mapping["decoder.block.path_rcus.3.0.bn.weight"] == "ResidualConvUnit.3.2.weight"


def test_seed_checkpoint_with_a_missing_key_is_refused():
    state = document_model(50, with_fc=False, seed=1).state_dict()
    del state["ChainedResidualPool.2.1.weight"]
    with pytest.raises(refineseg.CheckpointError, match=r"ChainedResidualPool\.2\.1\.weight"):
        refineseg.from_reference(state, "seed_refinenet50")


def test_relu_stage_matches_its_definition():
    crp = refineseg.ChainedResidualPooling(3, num_stages=2, kernel_size=1, relu_stage=True)
    x = torch.randn(1, 3, 8, 8)
    top = torch.relu(x)
    expected = x + top
    for conv in crp.convs:
        top = F.conv2d(F.max_pool2d(top, 5, 1, 2), conv.weight)
        expected = expected + top
    torch.testing.assert_close(crp(x), expected)
