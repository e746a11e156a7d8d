"""Every family trains with the default recipe: 30 steps from scratch, no non-finite loss, the loss falls.

The defaults diverged within 3-5 steps before the recipes (see benchmarks/convergence.py and
BENCHMARKS.md for the learning-rate grid behind them).
"""

from __future__ import annotations

import json
import math

import pytest

import refineseg
from refineseg.cli.app import main as cli_main
from refineseg.training import TrainConfig


@pytest.mark.slow
@pytest.mark.parametrize("name", ["refinenet18", "lw_refinenet18", "lw_refinenet_mbv2", "seed_refinenet50"])
def test_family_trains_with_the_default_recipe(name, tmp_path):
    out = tmp_path / name
    code = cli_main(
        [
            "train",
            "--model",
            name,
            "--dataset",
            "synthetic",
            "--iters",
            "30",
            "--log-interval",
            "5",
            "--batch-size",
            "4",
            "--crop",
            "64",
            "--workers",
            "0",
            "--val-interval",
            "0",
            "--ckpt-interval",
            "30",
            "--synthetic-val",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]  # mean loss of each 5-step window
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    saved = refineseg.from_pretrained(out / "last")
    assert all(v.isfinite().all() for v in saved.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("name", refineseg.list_models())
def test_recipe_fills_the_unset_options(name):
    recipe = refineseg.models.model_spec(name).recipe
    config = TrainConfig(model=name, iters=400)
    assert (config.lr, config.decoder_lr_mult, config.clip_grad_norm) == (
        recipe.lr,
        recipe.decoder_lr_mult,
        recipe.clip_grad_norm,
    )
    assert config.warmup_iters == min(recipe.warmup_iters, 40)
    explicit = TrainConfig(model=name, iters=400, lr=0.123, decoder_lr_mult=2.0, warmup_iters=0, clip_grad_norm=0.0)
    assert (explicit.lr, explicit.decoder_lr_mult, explicit.warmup_iters, explicit.clip_grad_norm) == (
        0.123,
        2.0,
        0,
        0.0,
    )


def test_unknown_model_in_a_config_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["train", "--model", "refinenet7", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'refinenet7'" in err[0]


def test_optimizer_step_clips_the_global_gradient_norm():
    import torch

    from refineseg.data import SyntheticSegmentation, eval_transform
    from refineseg.training import optimizer_step

    torch.manual_seed(0)
    model = refineseg.create_model("lw_refinenet_mbv2", num_classes=6, dropout=0.0).eval()  # eval: fixed BN
    data = SyntheticSegmentation("train", num_samples=2, size=64, transform=eval_transform())
    batch = (torch.stack([data[i][0] for i in range(2)]), torch.stack([data[i][1] for i in range(2)]))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is -gradient
    optimizer_step(model, iter([batch]), optimizer, step=1, clip_grad_norm=0.01)
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert update.norm().item() == pytest.approx(0.01, rel=1e-3)  # the raw gradient norm is far larger
