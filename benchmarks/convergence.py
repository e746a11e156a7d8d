"""Where training diverges: a learning-rate grid per family, with and without the default warm-up.

For each model, each backbone learning rate of the grid and each warm-up setting (none, or the
model's recipe), trains from scratch on the synthetic set for ``--steps`` optimizer steps with the
trainer's own ``optimizer_step`` and otherwise the model's default recipe (decoder multiplier,
gradient clipping, SGD, poly decay) and the trainer's default path (channels-last, ``--amp auto``).
A run *diverges* when its loss becomes non-finite or exceeds ``--blowup`` (10× the loss of a uniform
prediction); the table shows that step, or the mean loss of the first and last five steps. The check:
every default learning rate sits at least 4× below the smallest learning rate that diverged for its
family (with the default warm-up).

    python benchmarks/convergence.py            # the full grid, writes BENCHMARKS.md
    python benchmarks/convergence.py --models lw_refinenet18 --lrs 1e-3 1e-2 --no-write

Every run starts from the same seed and reads the same batches. Runs go to ``--jobs`` worker
processes of one thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_revision, machine_description, write_section  # noqa: E402

MODELS = ["refinenet18", "lw_refinenet18", "lw_refinenet_mbv2", "seed_refinenet50"]
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
NUM_CLASSES = 6  # the synthetic set


def run(
    name: str, lr: float, warmup: bool, steps: int, batch_size: int, crop: int, blowup: float, clip: float | None = None
) -> dict:
    """Train ``name`` for ``steps`` steps at backbone LR ``lr``; returns the losses or the divergence step."""
    import torch

    from refineseg.data import SyntheticSegmentation, train_transform
    from refineseg.errors import RefineSegError
    from refineseg.models import create_model
    from refineseg.training import TrainConfig, build_optimizer, optimizer_step, poly_lr_lambda
    from refineseg.training.config import resolve_amp

    torch.set_num_threads(1)
    config = TrainConfig(
        model=name,
        lr=lr,
        iters=steps,
        batch_size=batch_size,
        crop=crop,
        clip_grad_norm=clip,
        **({} if warmup else {"warmup_iters": 0}),
    )
    data = SyntheticSegmentation(
        "train", num_samples=steps * batch_size, size=128, transform=train_transform(crop, seed=0)
    )
    batches = iter(torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False))
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = resolve_amp(config.amp, torch.device("cpu"))
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(config))
    losses: list[float] = []
    for step in range(1, steps + 1):
        try:
            loss = optimizer_step(
                model,
                batches,
                optimizer,
                scheduler,
                step=step,
                amp=amp,
                clip_grad_norm=config.clip_grad_norm,
                channels_last=config.channels_last,
            )
        except RefineSegError:  # non-finite loss
            return {"diverged": step}
        if loss > blowup:
            return {"diverged": step}
        losses.append(loss)
    return {"first": sum(losses[:5]) / 5, "last": sum(losses[-5:]) / 5}


def cell(result: dict | None) -> str:
    if result is None:
        return "-"
    if "diverged" in result:
        return f"**div@{result['diverged']}**"
    return f"{result['first']:.2f}→{result['last']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--lrs", nargs="+", type=float, default=LRS, help="backbone learning rates")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument(
        "--blowup",
        type=float,
        default=10 * math.log(NUM_CLASSES),
        help="a loss above this counts as diverged (default: 10× a uniform prediction's)",
    )
    parser.add_argument(
        "--clip-grad-norm",
        type=float,
        default=None,
        help="override the recipes' gradient clipping (0: off), to explore",
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("runs/convergence.json"),
        help="JSON file of finished runs: reused when the grid is run again (delete it to redo)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate the runs in --results (missing cells show as -)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    import torch

    from refineseg.models import model_spec
    from refineseg.training import TrainConfig
    from refineseg.training.config import resolve_amp

    defaults = TrainConfig()
    path = (
        f"{'channels-last' if defaults.channels_last else 'contiguous'}, `--amp {defaults.amp}` "
        f"({resolve_amp(defaults.amp, torch.device('cpu'))} here)"
    )
    grid = [(name, lr, warmup) for name in args.models for warmup in (False, True) for lr in args.lrs]
    settings = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "blowup": args.blowup,
        "clip_grad_norm": args.clip_grad_norm,
        "path": path,
    }
    saved = json.loads(args.results.read_text()) if args.results.is_file() else {}
    done = saved.get("runs", {}) if saved.get("settings") == settings else {}

    def label(key: tuple) -> str:
        return f"{key[0]} lr={key[1]:g} warmup={'yes' if key[2] else 'no'}"

    results = {key: done[label(key)] for key in grid if label(key) in done}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            key: pool.submit(run, *key, args.steps, args.batch_size, args.crop, args.blowup, args.clip_grad_norm)
            for key in grid
            if key not in results and not args.report_only
        }
        for key, future in futures.items():
            results[key] = done[label(key)] = future.result()
            print(f"{label(key)}: {cell(results[key])}", flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps({"settings": settings, "runs": done}, indent=1))

    lines = [
        "| model | warm-up | " + " | ".join(f"{lr:g}" for lr in args.lrs) + " |",
        "|---|---|" + "---|" * len(args.lrs),
    ]
    checks = []
    for name in args.models:
        recipe = model_spec(name).recipe
        for warmup in (False, True):
            row = [cell(results.get((name, lr, warmup))) for lr in args.lrs]
            label = f"{min(recipe.warmup_iters, args.steps // 10)} steps" if warmup else "none"
            lines.append(f"| {name} | {label} | " + " | ".join(row) + " |")
        diverged = [lr for lr in args.lrs if "diverged" in results.get((name, lr, True), {})]
        smallest = min(diverged) if diverged else None
        ok = smallest is None or smallest >= 4 * recipe.lr
        margin = (
            "none diverged"
            if smallest is None
            else f"smallest diverging lr {smallest:g} = {smallest / recipe.lr:.0f}× the default"
        )
        checks.append(
            f"- {name}: default lr {recipe.lr:g} (decoder ×{recipe.decoder_lr_mult:g}, clip "
            f"{recipe.clip_grad_norm or 'off'}); {margin}: {'PASS' if ok else 'FAIL'} (≥ 4× needed)"
        )
    table = "\n".join(lines)
    print(table)
    print("\n".join(checks))
    if not args.no_write:
        write_section(
            "convergence",
            (
                "## Convergence: learning-rate grid per family (from scratch, synthetic set)\n\n"
                f"`python benchmarks/convergence.py` — {args.steps} SGD steps of batch {args.batch_size} at "
                f"{args.crop}×{args.crop} on the trainer's default path ({path}), each model's default recipe except "
                "the backbone learning rate (columns; the decoder's is that × the recipe's multiplier). A cell is "
                "`loss of the first 5 steps → loss of the last 5`, or **div@N**: the loss became non-finite or "
                f"exceeded {args.blowup:.1f} at step N.\n"
                f"Machine: {machine_description()}; revision {git_revision()}.\n\n{table}\n\n" + "\n".join(checks)
            ),
        )


if __name__ == "__main__":
    main()
