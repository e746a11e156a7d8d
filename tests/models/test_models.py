"""Model library: parameter counts, shapes, key layouts, backbone loading, checkpoints, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import manifest, random_state
from safetensors.torch import save_file

import refineseg
from refineseg.models import reference_key_map

# Parameter counts at 21 classes, from the reference manifests / ARCHITECTURES.md.
PUBLISHED_PARAMETERS = {
    "refinenet50": 99_060_309,
    "refinenet101": 118_052_437,
    "refinenet152": 133_696_085,
    "lw_refinenet50": 27_357_525,
    "lw_refinenet101": 46_349_653,
    "lw_refinenet152": 61_993_301,
    "lw_refinenet_mbv2": 3_284_565,
    "seed_refinenet101": 154_304_960,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_published_variant():
    names = set(refineseg.list_models())
    expected = {f"refinenet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {f"lw_refinenet{d}" for d in (18, 34, 50, 101, 152)} | {"lw_refinenet_mbv2"}
    expected |= {f"seed_refinenet{d}" for d in (50, 101, 152)}
    assert expected <= names
    with pytest.raises(ValueError, match="unknown model"):
        refineseg.create_model("refinenet7")


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_match_the_references(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = refineseg.create_model(name, num_classes=21)
    assert count(model) == PUBLISHED_PARAMETERS[name]


def test_seed_decoder_parameter_count():
    with torch.device("meta"):
        model = refineseg.create_model("seed_refinenet101", num_classes=21)
    assert count(model.decoder) + count(model.head) == 111_804_800


@pytest.mark.parametrize(
    "name",
    [
        "refinenet50",
        "refinenet101",
        "refinenet152",
        "lw_refinenet50",
        "lw_refinenet101",
        "lw_refinenet152",
        "lw_refinenet_mbv2",
    ],
)
def test_reference_key_sets_match_manifests(name):
    ref = manifest(name)
    with torch.device("meta"):
        model = refineseg.create_model(name, num_classes=ref["num_classes"])
    mapping = reference_key_map(model)
    converted = {mapping[k]: list(v.shape) for k, v in model.state_dict().items()}
    assert converted == ref["state_dict"]
    assert len(set(mapping.values())) == len(mapping)  # one-to-one


@pytest.mark.parametrize("name", ["refinenet18", "lw_refinenet34", "lw_refinenet_mbv2", "seed_refinenet50"])
@pytest.mark.parametrize("size", [(33, 47), (97, 130)])
def test_output_shapes_at_odd_sizes(name, size):
    model = refineseg.create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        native = model(x, upsample=False)
    assert out.shape == (1, 5, *size)
    if name.startswith("seed"):
        assert native.shape == (1, 5, *size)
    else:  # stride 4 after conv1 (s2), maxpool (s2): ceil-division twice
        h, w = ((s - 1) // 2 + 1 for s in size)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        assert native.shape == (1, 5, h, w)


def test_fcn32_baseline_classifies_the_stride_32_features():
    """The FCN-32s-style baseline: no decoder parameters, a 1×1 classifier at stride 32, bilinear upsampling."""
    torch.manual_seed(0)
    model = refineseg.create_model("fcn32_mbv2", num_classes=5).eval()
    spec = refineseg.models.model_spec("fcn32_mbv2")
    assert spec.family == "baseline" and spec.recipe == refineseg.models.model_spec("lw_refinenet_mbv2").recipe
    with pytest.raises(ValueError, match="no published reference layout"):
        reference_key_map(model)
    # Parameters: torchvision's MobileNetV2 without classifier and features.18, plus the inserted
    # expand step of the first block (1x1 conv 32->32 + BN), plus a 1x1 conv 320 -> 5 with bias.
    shapes = manifest("torchvision_mobilenet_v2")["state_dict"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    trunk = sum(
        math.prod(s)
        for k, s in shapes.items()
        if not k.startswith(("classifier.", "features.18.")) and not k.endswith(buffers)
    )
    assert count(model) == trunk + (32 * 32 + 2 * 32) + (320 * 5 + 5)
    assert count(model.decoder) == 0 and count(model.head) == 320 * 5 + 5
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        out, native = model(x), model(x, upsample=False)
        features = model.encoder(x)[-1]
    h, w = 97, 130
    for _ in range(5):  # five stride-2 3x3 convs with padding 1
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    assert native.shape == (1, 5, h, w) == (1, 5, 4, 5)
    assert out.shape == (1, 5, 97, 130)
    weight, bias = model.head.conv.weight[:, :, 0, 0], model.head.conv.bias
    expected = torch.einsum("kc,nchw->nkhw", weight, features) + bias[:, None, None]
    torch.testing.assert_close(native, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out, torch.nn.functional.interpolate(expected, size=(97, 130), mode="bilinear"), rtol=1e-5, atol=1e-5
    )


def test_rejects_tiny_or_malformed_inputs():
    model = refineseg.create_model("lw_refinenet18", num_classes=3).eval()
    with pytest.raises(ValueError, match=">= 32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("output_stride,expected", [(32, [8, 4, 2, 1]), (16, [8, 4, 2, 2]), (8, [8, 4, 4, 4])])
def test_resnet_output_stride(output_stride, expected):
    backbone = refineseg.create_model("lw_refinenet18", 3, output_stride=output_stride).encoder.eval()
    features = backbone(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in features] == expected


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_resnet_checkpoint_loads(tmp_path, depth):
    ref = manifest(f"torchvision_resnet{depth}")
    state = random_state(ref["state_dict"], seed=depth)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(state, path)
    model = refineseg.create_model(f"lw_refinenet{depth}", num_classes=4, backbone_weights=path)
    loaded = model.encoder.state_dict()
    backbone_keys = {k for k in state if not k.startswith("fc.")}
    assert set(loaded) == backbone_keys
    for key in backbone_keys:
        assert torch.equal(loaded[key], state[key]), key


def test_torchvision_mobilenet_checkpoint_loads_with_identity_expand(tmp_path):
    ref = manifest("torchvision_mobilenet_v2")
    state = random_state(ref["state_dict"], seed=3)
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file(state, str(path))
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=4, backbone_weights=path).eval()
    loaded = model.encoder.state_dict()
    shift = {
        "features.1.conv.0.": "features.1.conv.1.",
        "features.1.conv.1.": "features.1.conv.2.",
        "features.1.conv.2.": "features.1.conv.3.",
    }
    for key, value in state.items():
        if key.startswith(("classifier.", "features.18.")):
            continue
        prefix = next((p for p in shift if key.startswith(p)), None)
        ours = shift[prefix] + key[len(prefix) :] if prefix else key
        assert torch.equal(loaded[ours], value), key
    # The inserted expand step (1x1 conv + BN + ReLU6) must leave the ReLU6-bounded stem output unchanged.
    stem_out = model.encoder.features[0](torch.randn(1, 3, 64, 64))
    expand = model.encoder.features[1].conv[0]
    torch.testing.assert_close(expand(stem_out), stem_out, rtol=1e-6, atol=1e-6)


def test_backbone_checkpoint_with_wrong_keys_names_them(tmp_path):
    state = random_state(manifest("torchvision_resnet18")["state_dict"])
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    del state["layer1.0.bn1.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(refineseg.CheckpointError) as info:
        refineseg.create_model("lw_refinenet18", 3, backbone_weights=path)
    message = str(info.value)
    assert str(path) in message and "layer9.0.conv1.weight" in message and "layer1.0.bn1.bias" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["lw_refinenet18", "lw_refinenet_mbv2", "refinenet18"])
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = refineseg.create_model(
        name, num_classes=3, class_names=["bg", "cat", "dog"], palette=[(0, 0, 0), (10, 20, 30), (200, 100, 0)]
    )
    model.train()
    model(torch.randn(2, 3, 64, 64))  # move BN running statistics away from their init
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    restored = refineseg.from_pretrained(tmp_path / "ckpt")
    assert restored.config == model.config
    assert restored.config.class_names == ["bg", "cat", "dog"]
    x = torch.randn(1, 3, 65, 77)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_from_pretrained_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(refineseg.CheckpointError, match="config.json"):
        (tmp_path / "empty").mkdir()
        refineseg.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(
    "name", ["refinenet18", "lw_refinenet18", "lw_refinenet_mbv2", "seed_refinenet50", "fcn32_mbv2"]
)
def test_gradients_reach_every_trainable_parameter(name):
    model = refineseg.create_model(name, num_classes=3, dropout=0.0).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing


def test_freeze_bn_keeps_backbone_statistics_fixed():
    model = refineseg.create_model("lw_refinenet18", num_classes=3, freeze_bn=True).train()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    bn_params = [p for n, p in model.encoder.named_parameters() if "bn" in n or "downsample.1" in n]
    assert bn_params and all(not p.requires_grad and p.grad is None for p in bn_params)
    assert model.encoder.conv1.weight.grad is not None


@pytest.mark.parametrize("name", ["refinenet18", "lw_refinenet_mbv2"])
def test_eval_mode_is_deterministic(name):
    model = refineseg.create_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_blocks_compose_for_any_number_of_paths():
    block = refineseg.RefineNetBlock([8, 16, 32], channels=12, path_rcus=[1, 2, 0], out_rcus=1, crp_stages=2)
    paths = [torch.randn(1, 8, 20, 24), torch.randn(1, 16, 10, 12), torch.randn(1, 32, 5, 6)]
    assert block(paths).shape == (1, 12, 20, 24)
    single = refineseg.RefineNetBlock([6], channels=6, path_rcus=0, out_rcus=0, crp_stages=0, kernel_size=1)
    x = torch.randn(1, 6, 7, 7)
    torch.testing.assert_close(single([x]), torch.relu(x))  # identity MRF, empty CRP -> just the ReLU


def test_chained_residual_pooling_matches_its_definition():
    crp = refineseg.ChainedResidualPooling(4, num_stages=3, kernel_size=1)
    x = torch.randn(1, 4, 9, 9)
    top, expected = x, x
    for conv in crp.convs:
        top = torch.nn.functional.conv2d(torch.nn.functional.max_pool2d(top, 5, 1, 2), conv.weight)
        expected = expected + top
    torch.testing.assert_close(crp(x), expected)


def test_multi_resolution_fusion_matches_its_definition():
    mrf = refineseg.MultiResolutionFusion([3, 5], 4, kernel_size=1)
    fine, coarse = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)
    up = torch.nn.functional.interpolate(mrf.convs[1](coarse), size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(mrf([fine, coarse]), mrf.convs[0](fine) + up)


@pytest.mark.parametrize(
    "name", ["refinenet18", "lw_refinenet18", "lw_refinenet_mbv2", "seed_refinenet50", "fcn32_mbv2"]
)
def test_dropout_option_reaches_every_family(name):
    model = refineseg.create_model(name, num_classes=3, dropout=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and all(p == 0.3 for p in rates)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        first = model(x)
        assert not torch.equal(first, model(x))  # a new dropout mask per pass
        model.eval()
        assert torch.equal(model(x), model(x))
    off = refineseg.create_model(name, num_classes=3, dropout=0.0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in off.modules())


@pytest.mark.parametrize(
    "name,default",
    [
        ("refinenet50", 0.5),
        ("lw_refinenet50", 0.5),
        ("lw_refinenet_mbv2", None),
        ("seed_refinenet50", None),
        ("fcn32_mbv2", None),
    ],
)
def test_default_dropout_per_family(name, default):
    with torch.device("meta"):
        model = refineseg.create_model(name, num_classes=3)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == ({default} if default else set())
