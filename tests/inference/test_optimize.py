"""Inference optimizations: BN folding, channels-last, bf16 autocast and torch.compile."""

from __future__ import annotations

import pytest
import torch
from conftest import briefly_trained_model, synthetic_batch
from torch import nn

import refineseg
from refineseg.inference.optimize import InferenceModel, fold_batch_norm, optimize_for_inference
from refineseg.inference.predictor import predict_probabilities

NUM_CLASSES = 5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def count_batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))
                if m.affine:
                    m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def random_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batch_norm(refineseg.create_model(name, num_classes=NUM_CLASSES))


def images(size: tuple[int, int] = (64, 96), n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["lw_refinenet_mbv2", "lw_refinenet18", "refinenet18", "seed_refinenet50"])
def test_fold_batch_norm_matches_eval_model(name):
    model = random_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_count = count_batch_norms(model)
    assert bn_count > 0

    folded = fold_batch_norm(model)
    assert count_batch_norms(folded) == 0
    assert folded.batch_norm_folded and not folded.training
    x = images()
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) < 1e-4
    # The original is untouched.
    assert count_batch_norms(model) == bn_count
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fold_batch_norm_handles_grouped_and_biased_convs():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, affine=False))
    randomize_batch_norm(block)
    block[4].running_mean.normal_()
    folded = fold_batch_norm(block)
    x = torch.randn(2, 8, 10, 10)
    assert relative_error(folded(x), block(x)) < 1e-5
    assert isinstance(folded[1], nn.Identity) and folded[0].groups == 8


def test_optimized_model_is_a_drop_in_replacement():
    model = random_model("lw_refinenet18")
    fast = optimize_for_inference(model)  # fold BN + channels-last, float32
    assert isinstance(fast, InferenceModel) and not fast.training
    assert fast.config == model.config and fast.num_classes == NUM_CLASSES
    assert fast.device == torch.device("cpu") == next(fast.parameters()).device
    assert count_batch_norms(fast) == 0 and count_batch_norms(model) > 0
    assert fast.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)

    x = images()
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == (2, NUM_CLASSES, 64, 96) and out.is_contiguous()
    with torch.no_grad():
        reference = model(x)
        assert relative_error(out, reference) < 1e-4
        assert relative_error(fast(x, upsample=False), model(x, upsample=False)) < 1e-4
        slide = predict_probabilities(fast, x, mode="slide", crop=64, stride=32)
        assert relative_error(slide, predict_probabilities(model, x, mode="slide", crop=64, stride=32)) < 1e-4
    with pytest.raises(RuntimeError, match="cannot be trained"):
        fast.train()


def test_channels_last_without_folding():
    model = random_model("lw_refinenet_mbv2")
    fast = optimize_for_inference(model, fold_bn=False, channels_last=True)
    assert count_batch_norms(fast) == count_batch_norms(model)
    x = images()
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) < 1e-4


def test_dtype_validation():
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="CUDA"):
        optimize_for_inference(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        optimize_for_inference(model, dtype=torch.int8)
    assert optimize_for_inference(model, dtype=torch.float32).dtype is None


@pytest.fixture(scope="module")
def trained_model() -> nn.Module:
    return briefly_trained_model()


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch(8, split="val")


def test_bf16_predictions_agree_with_float32(trained_model, held_out):
    x, y = held_out
    with torch.no_grad():
        reference = trained_model(x).argmax(1)
    valid = y != 255
    assert (reference == y)[valid].float().mean() > 0.7  # the model did learn something (about 0.8)
    for fold_bn in (False, True):
        fast = optimize_for_inference(trained_model, dtype=torch.bfloat16, fold_bn=fold_bn)
        out = fast(x)
        assert out.dtype == torch.float32
        agreement = (out.argmax(1) == reference).float().mean().item()
        assert agreement >= 0.99, (fold_bn, agreement)


@pytest.mark.slow
def test_compiled_model_matches_eager_at_two_sizes():
    model = random_model("lw_refinenet_mbv2")
    fast = optimize_for_inference(model, compile=True)
    with torch.no_grad():
        for size in ((64, 64), (64, 96)):
            x = images(size, n=1)
            assert relative_error(fast(x), model(x)) < 1e-4


def test_evaluate_and_predict_use_the_fast_path_by_default():
    from refineseg.cli.predict import PredictConfig
    from refineseg.evaluation.evaluate import EvalConfig
    from refineseg.inference.optimize import InferenceModel

    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=3)
    for config in (EvalConfig(checkpoint="c", dataset="synthetic"), PredictConfig(checkpoint="c", inputs=["x"])):
        assert isinstance(config.prepare(model), InferenceModel)
    plain = PredictConfig(checkpoint="c", inputs=["x"], optimize=False).prepare(model)
    assert plain is model and not model.training
    bf16 = PredictConfig(checkpoint="c", inputs=["x"], precision="bf16").prepare(model)
    assert isinstance(bf16, InferenceModel)
