"""What refinement buys: Light-Weight RefineNet against an FCN-32s-style baseline on thin structures.

Trains ``lw_refinenet_mbv2`` and the baseline ``fcn32_mbv2`` (the same ImageNet MobileNetV2, a 1×1
conv on its stride-32 features, logits upsampled bilinearly) with identical settings, those of
``configs/demo.yaml``: the synthetic set (1-3 px wires and small dots, so boundary-heavy), the
models' shared default recipe, crops of 128 px from images scaled 1.5-2.5×, batch 8, seed 0,
``--steps`` steps each. Each model's ``last`` checkpoint (no selection on the validation split) is
then scored on the validation split with the demo's test-time settings (2× scale + flip, scored at
the native 128 px) by ``refineseg evaluate``: mIoU, mean Boundary IoU and the trimap accuracy
(pixel accuracy within 1, 2, 4, 8, 16 px of a ground-truth boundary). The table and a figure of one
validation image (image | ground truth | both predictions, full view and a zoomed crop) go to
BENCHMARKS.md and docs/figures/boundary_crops.png.

    python benchmarks/boundary.py              # 400 steps each (~8 min on 2 cores), writes BENCHMARKS.md
    python benchmarks/boundary.py --quick      # smoke run: 6 steps, 4 images, writes nothing outside --out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_revision, machine_description, write_section  # noqa: E402

MODELS = ["lw_refinenet_mbv2", "fcn32_mbv2"]
TRIMAP_WIDTHS = [1, 2, 4, 8, 16]
FIGURE = ROOT / "docs" / "figures" / "boundary_crops.png"
PANEL = 384  # pixels per figure panel
GAP = 6  # white space between panels
ZOOM_WINDOW = 32  # side of the zoomed crop, in image pixels


def train_and_evaluate(name: str, args: argparse.Namespace) -> dict:
    """Train ``name`` with the demo's settings, evaluate its last checkpoint; returns metrics.json + timings."""
    from refineseg.cli.demo import TEST_TIME
    from refineseg.cli.evaluate import EvalConfig, run_evaluate
    from refineseg.training import TrainConfig, train
    from refineseg.utils.config import config_from_values, load_yaml

    run_dir = args.out / name
    values = load_yaml(ROOT / "configs" / "demo.yaml")
    values.update(
        model=name,
        out=str(run_dir),
        iters=args.steps,
        seed=args.seed,
        overwrite=True,
        val_interval=0,
        ckpt_interval=args.steps,
    )
    if args.quick:
        values.update(synthetic_train=16, synthetic_val=args.images, workers=0)
    config = config_from_values(TrainConfig, values, "configs/demo.yaml")
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start

    extra = {f: True for f in ("report", "save_predictions") if f in {x.name for x in dataclasses.fields(EvalConfig)}}
    eval_config = EvalConfig(
        checkpoint=str(result.last),
        dataset="synthetic",
        split=config.val_split,
        out=str(run_dir / "eval"),
        synthetic_val=args.images,
        synthetic_size=config.synthetic_size,
        **TEST_TIME,
        **extra,
    )
    start = time.perf_counter()
    run_evaluate(eval_config)
    eval_seconds = time.perf_counter() - start
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    return {
        "metrics": metrics,
        "checkpoint": str(result.last),
        "eval_dir": str(run_dir / "eval"),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "config": dataclasses.asdict(config),
    }


def trimap_at(metrics: dict, width: int) -> float | None:
    """Trimap accuracy at ``width`` px from ``metrics["trimap"]`` (None when not measured)."""
    trimap = metrics.get("trimap") or {}
    widths, accuracy = trimap.get("widths", []), trimap.get("accuracy", [])
    return accuracy[widths.index(width)] if width in widths else None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(results: dict[str, dict]) -> str:
    """Markdown table: model, family, params, mIoU, mBoundaryIoU, trimap accuracies, training time."""
    from refineseg.models import model_spec

    header = (
        ["model", "family", "params", "mIoU %", "mBoundaryIoU %"]
        + [f"trimap {w}px %" for w in TRIMAP_WIDTHS]
        + ["trimap mean %", "train min"]
    )
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for name, r in results.items():
        m = r["metrics"]
        accuracy = (m.get("trimap") or {}).get("accuracy") or []
        cells = [
            f"`{name}`",
            model_spec(name).family,
            f"{r['params']:,}",
            percent(m.get("mIoU")),
            percent(m.get("mBoundaryIoU")),
        ]
        cells += [percent(trimap_at(m, w)) for w in TRIMAP_WIDTHS]
        cells += [percent(sum(accuracy) / len(accuracy) if accuracy else None), f"{r['train_seconds'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (both sides of each edge marked)."""
    edge = np.zeros(labels.shape, bool)
    dx, dy = labels[:, 1:] != labels[:, :-1], labels[1:] != labels[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


def pick_image(dataset, count: int) -> int:
    """The validation image with the largest share of ground-truth boundary pixels (blind to predictions)."""
    shares = [boundary_mask(dataset.load_sample(i)[1]).mean() for i in range(count)]
    return int(np.argmax(shares))


def prediction(result: dict, image: np.ndarray, sample: str) -> np.ndarray:
    """The evaluation's saved label PNG of ``sample`` when it wrote one, else the checkpoint re-run alike."""
    saved = Path(result["eval_dir"]) / "predictions" / f"{sample}.png"
    if saved.is_file():
        from PIL import Image

        with Image.open(saved) as img:
            return np.asarray(img)
    from refineseg.cli.demo import TEST_TIME
    from refineseg.inference.predictor import segment
    from refineseg.models import from_pretrained

    model = from_pretrained(result["checkpoint"])
    return segment(model, image, **TEST_TIME)


def zoom_window(labels: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side``² window holding the most ground-truth boundary pixels."""
    edge = boundary_mask(labels).astype(np.int64)
    integral = np.pad(edge.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    y, x = np.unravel_index(np.argmax(sums), sums.shape)
    return int(y), int(x)


def write_figure(results: dict[str, dict], path: Path, images: int) -> tuple[Path, str]:
    """image | ground truth | each model's prediction: full view on top, a zoomed crop below."""
    from PIL import Image, ImageDraw

    from refineseg.data import SyntheticSegmentation, write_image
    from refineseg.report.visualize import colorize

    first = next(iter(results.values()))["config"]
    dataset = SyntheticSegmentation("val", num_samples=images, size=first["synthetic_size"])
    index = pick_image(dataset, images)
    image, mask = dataset.load_sample(index)
    sample = dataset.sample_name(index)
    palette = dataset.palette
    panels = [("image", image), ("ground truth", colorize(mask, palette))]
    panels += [(name, colorize(prediction(r, image, sample), palette)) for name, r in results.items()]
    y, x = zoom_window(mask, ZOOM_WINDOW)
    caption_h = 20
    step = PANEL + GAP
    sheet = Image.new("RGB", (step * len(panels) - GAP, caption_h + 2 * PANEL + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    scale = PANEL / mask.shape[0]  # image pixels -> panel pixels of the full view
    for i, (title, rgb) in enumerate(panels):
        left = i * step
        draw.text((left + 6, 4), title, fill=(0, 0, 0))
        full = Image.fromarray(rgb).resize((PANEL, PANEL), Image.NEAREST)
        crop = Image.fromarray(rgb[y : y + ZOOM_WINDOW, x : x + ZOOM_WINDOW]).resize((PANEL, PANEL), Image.NEAREST)
        sheet.paste(full, (left, caption_h))
        sheet.paste(crop, (left, caption_h + PANEL + GAP))
        draw.rectangle(
            [
                left + x * scale,
                caption_h + y * scale,
                left + (x + ZOOM_WINDOW) * scale - 1,
                caption_h + (y + ZOOM_WINDOW) * scale - 1,
            ],
            outline=(255, 255, 0),
            width=2,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.asarray(sheet))
    return path, f"{sample} (validation index {index}), zoom window {ZOOM_WINDOW}×{ZOOM_WINDOW} px at (x={x}, y={y})"


def write_compare(results: dict[str, dict], path: Path) -> Path | None:
    """``refineseg compare`` of the two evaluations (per-image differences), when this refineseg has it."""
    try:
        from refineseg.report import write_compare_report
    except ImportError:
        return None
    return write_compare_report(*(r["eval_dir"] for r in results.values()), out=path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default 400; --quick: 6)")
    parser.add_argument("--images", type=int, default=None, help="validation images (default 64; --quick: 4)")
    parser.add_argument("--seed", type=int, default=0, help="one seed for both models (init, data order, crops)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/boundary"),
        help="run directory: OUT/<model>/ (training, a rerun archives the earlier one), "
        "OUT/<model>/eval/ (metrics.json, report.html), OUT/compare.html, OUT/results.json",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run; implies --no-write")
    parser.add_argument(
        "--no-write", action="store_true", help="leave BENCHMARKS.md and docs/figures alone (the figure goes to OUT)"
    )
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.quick else 400)
    args.images = args.images or (4 if args.quick else 64)
    write = not (args.quick or args.no_write)

    from refineseg.models import from_pretrained

    results = {}
    for name in MODELS:
        print(f"== {name}: {args.steps} steps, then evaluation on {args.images} validation images", flush=True)
        results[name] = train_and_evaluate(name, args)
        model = from_pretrained(results[name]["checkpoint"])
        results[name]["params"] = sum(p.numel() for p in model.parameters())
    text = table(results)
    print(text)
    missing = [n for n, r in results.items() if "mBoundaryIoU" not in r["metrics"]]
    if missing:
        print(f"note: no boundary metrics in metrics.json of {', '.join(missing)} (this refineseg predates them)")
    figure, figure_note = write_figure(results, FIGURE if write else args.out / FIGURE.name, args.images)
    print(f"figure: {figure} ({figure_note})")
    compare = write_compare(results, args.out / "compare.html")
    if compare:
        print(f"side-by-side page: {compare}")
    (args.out / "results.json").write_text(
        json.dumps(
            {n: {k: v for k, v in r.items() if k != "config"} for n, r in results.items()}, indent=1, default=str
        )
    )
    if write:
        write_section("boundary", body(results, text, figure_note, args))
        print("wrote BENCHMARKS.md")


def body(results: dict[str, dict], text: str, figure_note: str, args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section: settings, table, difference, figure."""
    refine, base = (results[n]["metrics"] for n in MODELS)

    def gain(key: str) -> str:
        return "-" if key not in refine or key not in base else f"{100 * (refine[key] - base[key]):+.1f} points"

    config = results[MODELS[0]]["config"]
    widths = (refine.get("trimap") or {}).get("widths") or [0]
    return (
        f"## Refinement vs an FCN-32s baseline at boundaries (issue 11)\n\n"
        f"`python benchmarks/boundary.py` — both models from torchvision's ImageNet MobileNetV2, trained "
        f"{args.steps} steps each with the same settings (configs/demo.yaml: synthetic set, batch "
        f"{config['batch_size']}, crop {config['crop']} from images scaled {config['scale_min']:g}-"
        f"{config['scale_max']:g}×, SGD with the shared default recipe lr {config['lr']:g} × "
        f"{config['decoder_lr_mult']:g} for decoder and head, seed {args.seed}); the last checkpoints scored on "
        f"{args.images} validation images at 2× scale + flip, at the native {config['synthetic_size']} px. "
        f"`fcn32_mbv2` is a baseline, not a RefineNet: a 1×1 conv on the stride-32 features, logits upsampled "
        f"bilinearly (FCN-32s style). Boundary IoU and trimap accuracy (pixel accuracy within a band of that "
        f"width around ground-truth boundaries; the mean is over the widths {min(widths)}-{max(widths)} px) come "
        f"from `refineseg evaluate`'s metrics.json. One seed and one run per model: the run-to-run spread is "
        f"not measured. "
        f"`train min` is wall time on a machine shared with other jobs, so only roughly comparable.\n"
        f"Machine: {machine_description()}; commit {git_revision()}.\n\n{text}\n\n"
        f"lw_refinenet_mbv2 − fcn32_mbv2: mIoU {gain('mIoU')}, mean Boundary IoU {gain('mBoundaryIoU')}.\n\n"
        f"![image, ground truth, lw_refinenet_mbv2, fcn32_mbv2](docs/figures/{FIGURE.name})\n\n"
        f"Above: {figure_note}, chosen as the validation image with the largest share of ground-truth "
        f"boundary pixels (the choice ignores the predictions); top row the whole 128 px image, bottom row "
        f"the yellow window zoomed.\n"
    )


if __name__ == "__main__":
    main()
