"""Gradient checkpointing: same gradients, same BN statistics, same state_dict keys, less memory."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import refineseg
from refineseg.models.grad_checkpointing import checkpointed_modules, enable_grad_checkpointing, is_grad_checkpointing

NUM_CLASSES = 5


def training_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, target).backward()
    return logits.detach()


def batch(seed: int = 0, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=g), torch.randint(0, NUM_CLASSES, (2, size, size), generator=g)


@pytest.mark.parametrize("name", ["lw_refinenet18", "lw_refinenet_mbv2", "seed_refinenet50"])
def test_checkpointing_matches_plain_training_step(name):
    torch.manual_seed(0)
    plain = refineseg.create_model(name, num_classes=NUM_CLASSES, dropout=0.0)
    checkpointed = copy.deepcopy(plain)
    wrapped = enable_grad_checkpointing(checkpointed)
    assert wrapped and is_grad_checkpointing(checkpointed) and not is_grad_checkpointing(plain)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())

    x, target = batch()
    out_plain = training_step(plain, x, target)
    out_checkpointed = training_step(checkpointed, x, target)
    torch.testing.assert_close(out_checkpointed, out_plain, rtol=1e-5, atol=1e-6)
    grads = dict(checkpointed.named_parameters())
    for key, param in plain.named_parameters():
        if param.grad is None:
            assert grads[key].grad is None, key
            continue
        torch.testing.assert_close(grads[key].grad, param.grad, rtol=1e-5, atol=1e-6, msg=key)
    # The backward recomputation must not update BN running statistics a second time.
    state = checkpointed.state_dict()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)
        if key.endswith("num_batches_tracked"):
            assert value.item() == 1 and state[key].item() == 1, key


def test_checkpointed_modules():
    resnet = checkpointed_modules(refineseg.create_model("lw_refinenet18", num_classes=NUM_CLASSES))
    assert list(resnet) == [f"encoder.layer{i}" for i in range(1, 5)] + [f"decoder.blocks.{i}" for i in range(4)]
    mbv2 = checkpointed_modules(refineseg.create_model("lw_refinenet_mbv2", num_classes=NUM_CLASSES))
    assert sum(n.startswith("encoder.features.") for n in mbv2) == 17  # every inverted residual
    seed = checkpointed_modules(refineseg.create_model("seed_refinenet50", num_classes=NUM_CLASSES))
    assert list(seed)[-1] == "decoder.block"
    with pytest.raises(ValueError, match="no backbone stages"):
        enable_grad_checkpointing(torch.nn.Conv2d(3, 3, 1))


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for backward (outside checkpointed regions)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_checkpointing_saves_memory_and_only_acts_in_training():
    torch.manual_seed(0)
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=NUM_CLASSES, dropout=0.0)
    x, _ = batch()
    plain_bytes = saved_activation_bytes(model, x)
    enable_grad_checkpointing(model)
    assert saved_activation_bytes(model, x) < 0.5 * plain_bytes

    model.eval()
    with torch.no_grad():
        out = model(x)
    enable_grad_checkpointing(model, enabled=False)
    assert not is_grad_checkpointing(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), out)
    assert saved_activation_bytes(model, x) == plain_bytes


def test_checkpointed_model_copies_and_saves(tmp_path):
    model = refineseg.create_model("lw_refinenet18", num_classes=NUM_CLASSES, dropout=0.0)
    enable_grad_checkpointing(model)
    clone = copy.deepcopy(model)
    # The copy checkpoints its own modules, not the original's.
    assert all(m.forward.args[0] is m for m in clone.modules() if "forward" in m.__dict__)
    model.save_pretrained(tmp_path)
    loaded = refineseg.from_pretrained(tmp_path)
    assert list(loaded.state_dict()) == list(model.state_dict())
    loaded.load_state_dict(clone.state_dict())  # strict
