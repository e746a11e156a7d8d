"""refineseg vs. an independent functional re-implementation of the authors' reference layouts.

The functions in the first half of this file compute the forward pass of the released RefineNet-50,
Light-Weight RefineNet-50 and Light-Weight RefineNet-MobileNetV2 directly from a plain
``{reference key: tensor}`` dict, following the operation order written down in the reference layouts'
description (ARCHITECTURES.md of the project's shared reference). They use only ``torch.nn.functional``
and deliberately import nothing from refineseg's blocks or models, so they check ``from_reference`` (key
mapping, shapes) and the model's forward pass (operation order, strides, resizes) at the same time.

The manifests (key names and shapes) come from ``tests/manifests``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import manifest, random_state

import refineseg

NAMES = ["refinenet50", "lw_refinenet50", "lw_refinenet_mbv2"]
NUM_CLASSES = 21
BN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Functional reference (no refineseg imports)


class Calibrating(dict):
    """A state dict whose convolutions are rescaled, as they run, to give unit-std outputs."""


def _conv(sd, key, x, stride=1, groups=1):
    w = sd[key + ".weight"]
    y = F.conv2d(x, w, sd.get(key + ".bias"), stride=stride, padding=w.shape[-1] // 2, groups=groups)
    if isinstance(sd, Calibrating):  # each conv key is used exactly once per forward pass
        scale = y.std().clamp_min(1e-6)
        for leaf in ("weight", "bias"):
            if f"{key}.{leaf}" in sd:
                sd[f"{key}.{leaf}"] = sd[f"{key}.{leaf}"] / scale
        y = y / scale
    return y


def _bn(sd, key, x):
    return F.batch_norm(
        x,
        sd[key + ".running_mean"],
        sd[key + ".running_var"],
        sd[key + ".weight"],
        sd[key + ".bias"],
        training=False,
        eps=BN_EPS,
    )


def _relu6(x):
    return F.hardtanh(x, 0.0, 6.0)


def _resize(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def _count_blocks(sd, pattern: str) -> int:
    indices = {int(m[1]) for k in sd if (m := re.fullmatch(pattern, k))}
    assert indices == set(range(len(indices))), f"non-contiguous block indices for {pattern}"
    return len(indices)


def ref_resnet_trunk(sd, x):
    """torchvision ResNet (Bottleneck) -> [l1, l2, l3, l4]."""
    x = F.relu(_bn(sd, "bn1", _conv(sd, "conv1", x, stride=2)))  # 7x7, padding 3
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    levels = []
    for layer in range(1, 5):
        n = _count_blocks(sd, rf"layer{layer}\.(\d+)\.conv1\.weight")
        for b in range(n):
            p = f"layer{layer}.{b}"
            stride = 2 if (layer > 1 and b == 0) else 1
            out = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x)))
            out = F.relu(_bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", out, stride=stride)))
            out = _bn(sd, f"{p}.bn3", _conv(sd, f"{p}.conv3", out))
            if f"{p}.downsample.0.weight" in sd:
                identity = _bn(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", x, stride=stride))
            else:
                identity = x
            x = F.relu(out + identity)
        levels.append(x)
    return levels


def ref_rcu_chain(sd, prefix, x, expected):
    """``expected`` RCUs in order: x + conv_b(relu(conv_a(relu(x))))."""
    # keys are 1-based: <prefix>.0.1_conv ... <prefix>.0.n_conv
    idx = sorted(int(m[1]) for k in sd if (m := re.fullmatch(rf"{re.escape(prefix)}\.0\.(\d+)_conv\.weight", k)))
    assert idx == list(range(1, expected + 1)), f"{prefix}: RCU indices {idx}"
    for i in idx:
        y = _conv(sd, f"{prefix}.0.{i}_conv", F.relu(x))
        y = _conv(sd, f"{prefix}.0.{i}_conv_relu_varout_dimred", F.relu(y))
        x = x + y
    return x


def ref_crp(sd, prefix, x, stages=4):
    top = x
    for j in range(1, stages + 1):
        top = _conv(sd, f"{prefix}.0.{j}_outvar_dimred", F.max_pool2d(top, kernel_size=5, stride=1, padding=2))
        x = x + top
    return x


def ref_refinenet_decoder(sd, levels, light: bool):
    """Released (light=False) or Light-Weight (light=True) RefineNet cascade on ResNet levels."""
    feats = list(reversed(levels))  # l4, l3, l2, l1
    prev = None
    x = None
    for k in range(1, 5):
        x = _conv(sd, f"p_ims1d2_outl{k}_dimred", feats[k - 1])
        if not light:
            x = ref_rcu_chain(sd, f"adapt_stage{k}_b", x, expected=2)
        if k > 1:
            x = _conv(sd, f"adapt_stage{k}_b2_joint_varout_dimred", x)
            x = x + prev
        x = F.relu(x)
        x = ref_crp(sd, f"mflow_conv_g{k}_pool", x)
        if not light:
            x = ref_rcu_chain(sd, f"mflow_conv_g{k}_b", x, expected=3)
        if k < 4:
            x = _conv(sd, f"mflow_conv_g{k}_b3_joint_varout_dimred", x)
            prev = _resize(x, feats[k])
    return _conv(sd, "clf_conv", x)


MBV2_GROUPS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def ref_mbv2_trunk(sd, x):
    """Light-Weight RefineNet's MobileNetV2 -> [l1, ..., l8]."""
    x = _relu6(_bn(sd, "layer1.1", _conv(sd, "layer1.0", x, stride=2)))
    levels = [x]
    for g, (t, c, n, s) in enumerate(MBV2_GROUPS):
        layer = g + 2
        assert _count_blocks(sd, rf"layer{layer}\.(\d+)\.output\.0\.0\.weight") == n
        for b in range(n):
            p = f"layer{layer}.{b}.output"
            stride = s if b == 0 else 1
            y = _relu6(_bn(sd, f"{p}.0.1", _conv(sd, f"{p}.0.0", x)))
            assert y.shape[1] == x.shape[1] * t
            y = _relu6(_bn(sd, f"{p}.1.1", _conv(sd, f"{p}.1.0", y, stride=stride, groups=y.shape[1])))
            y = _bn(sd, f"{p}.2.1", _conv(sd, f"{p}.2.0", y))
            assert y.shape[1] == c
            x = x + y if (stride == 1 and x.shape[1] == y.shape[1]) else y
        levels.append(x)
    return levels


def ref_mbv2_decoder(sd, levels):
    l1, l2, l3, l4, l5, l6, l7, l8 = levels
    a = _relu6(_conv(sd, "conv8", l8) + _conv(sd, "conv7", l7))
    a = _resize(_conv(sd, "conv_adapt4", ref_crp(sd, "crp4", a)), l6)
    b = _relu6(_conv(sd, "conv6", l6) + _conv(sd, "conv5", l5) + a)
    b = _resize(_conv(sd, "conv_adapt3", ref_crp(sd, "crp3", b)), l4)
    c = _relu6(_conv(sd, "conv4", l4) + b)
    c = _resize(_conv(sd, "conv_adapt2", ref_crp(sd, "crp2", c)), l3)
    d = _relu6(_conv(sd, "conv3", l3) + c)
    d = ref_crp(sd, "crp1", d)
    return _conv(sd, "segm", d)


def reference_forward(name: str, sd, x):
    """Logits at output stride 4 (no final upsampling), eval mode."""
    if name == "lw_refinenet_mbv2":
        return ref_mbv2_decoder(sd, ref_mbv2_trunk(sd, x))
    return ref_refinenet_decoder(sd, ref_resnet_trunk(sd, x), light=name.startswith("lw_"))


# ---------------------------------------------------------------------------------------------
# Random reference state dicts and the models loaded from them


def calibrated_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """``random_state`` with every conv rescaled (LSUV-style, on one fixed random batch) so that
    activations stay O(1) through the whole network instead of compounding through residual
    sums and the CRP chains; otherwise early paths would vanish under the comparison tolerance."""
    state = Calibrating(random_state(manifest(name)["state_dict"], seed=seed))
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        reference_forward(name, state, x)
    return dict(state)


@functools.cache
def loaded(name: str):
    """(calibrated reference state dict, model loaded from it by from_reference), built once per name."""
    state = calibrated_state(name, seed=NAMES.index(name))
    model = refineseg.from_reference(state, name).eval()
    return state, model


def assert_close_scaled(actual, expected, tol=1e-4):
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual / scale, expected / scale, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("size", [(70, 90), (64, 96)], ids=["odd", "mult32"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_functional_reference(name, size):
    state, model = loaded(name)
    assert model.config.num_classes == NUM_CLASSES
    torch.manual_seed(1234)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = model(x, upsample=False)
        ref = reference_forward(name, state, x)
    assert ref.shape == (1, NUM_CLASSES, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    # The comparison is only meaningful when the logits are neither vanishing nor degenerate.
    assert torch.isfinite(ref).all() and ref.std() > 1e-3
    assert_close_scaled(ours, ref)


COARSEST_INPUT = {
    "refinenet50": "p_ims1d2_outl1_dimred.weight",
    "lw_refinenet50": "p_ims1d2_outl1_dimred.weight",
    "lw_refinenet_mbv2": "conv8.weight",
}


@pytest.mark.parametrize("name", NAMES)
def test_comparison_is_sensitive(name, monkeypatch):
    """The tolerance above is not vacuous: a wrong resize mode, or dropping the coarsest path
    (whose signal crosses every resize and CRP), moves the logits far beyond it."""
    state, _ = loaded(name)
    x = torch.randn(1, 3, 54, 74, generator=torch.Generator().manual_seed(5))
    key = COARSEST_INPUT[name]
    with torch.no_grad():
        base = reference_forward(name, state, x)
        no_coarse = reference_forward(name, dict(state, **{key: torch.zeros_like(state[key])}), x)
        monkeypatch.setattr(
            sys.modules[__name__],
            "_resize",
            lambda t, like: F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False),
        )
        wrong_resize = reference_forward(name, state, x)
    scale = base.abs().max()
    assert 0.5 < base.std() < 50  # calibrated: O(1) logits
    assert (base - no_coarse).abs().max() / scale > 1e-2
    assert (base - wrong_resize).abs().max() / scale > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_to_reference_roundtrip(name):
    state, model = loaded(name)
    out = refineseg.to_reference(model)
    assert set(out) == set(manifest(name)["state_dict"])
    for key, tensor in state.items():
        assert out[key].shape == tensor.shape, key
        assert torch.equal(out[key], tensor), key


def _mutations(state):
    key = next(k for k in state if k.endswith("running_var") and ".output.1." in k)
    missing = dict(state)
    del missing[key]
    extra = dict(state, **{"crp1.0.5_outvar_dimred.weight": torch.zeros(256, 256, 1, 1)})
    wrong_key = "crp2.0.3_outvar_dimred.weight"
    wrong = dict(state, **{wrong_key: torch.zeros(256, 256, 3, 3)})
    return [(missing, key), (extra, "crp1.0.5_outvar_dimred.weight"), (wrong, wrong_key)]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["missing", "extra", "wrong_shape"])
def test_mismatched_state_dict_raises(case):
    state, _ = loaded("lw_refinenet_mbv2")
    bad, key = _mutations(state)[case]
    with pytest.raises(refineseg.CheckpointError, match=re.escape(key)):
        refineseg.from_reference(bad, "lw_refinenet_mbv2")


def test_mismatched_resnet_state_dict_raises():
    state = dict(loaded("lw_refinenet50")[0])
    del state["layer3.5.bn2.running_mean"]
    with pytest.raises(refineseg.CheckpointError, match=re.escape("layer3.5.bn2.running_mean")):
        refineseg.from_reference(state, "lw_refinenet50")


@pytest.mark.parametrize("fmt", ["pth", "pth_wrapped", "safetensors"])
def test_from_reference_file(tmp_path, fmt):
    from safetensors.torch import save_file

    name = "lw_refinenet_mbv2"
    state, model = loaded(name)
    if fmt == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": state} if fmt == "pth_wrapped" else state, path)
    loaded_model = refineseg.from_reference(path, name).eval()
    ours, theirs = loaded_model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"clf_conv.weight": torch.zeros(21, 256, 3, 3)}, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(refineseg.CheckpointError):
        refineseg.from_reference(path, "lw_refinenet50")
    assert not marker.exists()
