"""The main job behind ``make demo``: train, evaluate and predict on the built-in synthetic data.

Everything lands in the run directory (``runs/demo`` by default): checkpoints ``last/`` and
``best/``, ``metrics.json``, a confusion matrix, training curves and prediction overlays.

Evaluation and prediction run at twice the image scale with flip (``TEST_TIME``): the synthetic
wires are 1-3 px wide and the Light-Weight family predicts at stride 4. Scores are computed at the
images' native resolution.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from refineseg.cli.evaluate import EvalConfig, run_evaluate
from refineseg.cli.predict import PredictConfig, run_predict
from refineseg.data import SyntheticSegmentation, write_image
from refineseg.training import TrainConfig, train
from refineseg.utils.config import config_from_values, load_yaml

TEST_TIME = {"mode": "multiscale", "scales": [2.0], "flip": True}


def run_demo(config_file: str | Path, out: str | None = None, num_samples: int = 6) -> dict:
    """Train with ``config_file`` (a :class:`TrainConfig` YAML), then evaluate and predict."""
    values = load_yaml(config_file)
    if out is not None:
        values["out"] = out
    values.setdefault("overwrite", not values.get("resume"))  # a re-run moves the earlier demo run aside
    config = config_from_values(TrainConfig, values, str(config_file))
    run_dir = Path(config.out)
    print(f"[1/3] training {config.model} on the synthetic dataset for {config.iters} steps -> {run_dir}")
    result = train(config)

    print("[2/3] evaluating the best checkpoint on the validation split (2x scale + flip)")
    summary = run_evaluate(
        EvalConfig(
            checkpoint=str(result.best),
            dataset=config.dataset,
            data_root=config.data_root,
            split=config.val_split,
            out=str(run_dir),
            **TEST_TIME,
            synthetic_val=config.synthetic_val,
            synthetic_size=config.synthetic_size,
        )
    )

    print(f"[3/3] segmenting {num_samples} validation images")
    samples_dir = run_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    val = SyntheticSegmentation("val", num_samples=num_samples, size=config.synthetic_size)
    for i in range(num_samples):
        image, _ = val.load_sample(i)
        write_image(samples_dir / f"{val.sample_name(i)}.png", image)
    run_predict(
        PredictConfig(
            checkpoint=str(result.best), inputs=[str(samples_dir)], out=str(run_dir / "predictions"), **TEST_TIME
        )
    )

    print()
    print(f"val mIoU {summary['mIoU']:.4f} (aAcc {summary['aAcc']:.4f}, mDice {summary['mDice']:.4f})")
    print(f"checkpoints: {run_dir / 'best'} (best), {run_dir / 'last'} (last, resumable)")
    print(f"metrics:     {run_dir / 'metrics.json'}, {run_dir / 'confusion_matrix.png'}")
    print(f"curves:      {run_dir / 'plots'}/{{loss,lr,miou}}.png, TensorBoard logs in {run_dir / 'tensorboard'}")
    print(f"overlays:    {run_dir / 'predictions'}/*_overlay.png")
    return {
        "summary": summary,
        **{k: str(v) for k, v in dataclasses.asdict(result).items()},
        "config": dataclasses.asdict(config),
    }


def _run(args: argparse.Namespace) -> None:
    run_demo(args.config, args.out)


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="train, evaluate and predict on the synthetic dataset (what `make demo` runs)", allow_abbrev=False
    )
    p.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    p.add_argument("--out", default=None, help="run directory (default: the config's `out`)")
    p.set_defaults(handler=_run)
