"""CamVid: the recipe runs and what refinement buys on real street scenes.

Reads finished training runs (``refineseg train --config configs/lw_refinenet_mbv2_camvid.yaml``
and the same recipe with ``--model fcn32_mbv2``), evaluates each run's ``best`` checkpoint on the
CamVid val split with ``refineseg evaluate`` (whole 480x360 frames, mIoU, per-class IoU, mean
Boundary IoU, trimap accuracy), and writes to BENCHMARKS.md:

* section "CamVid": one row per run (model, steps, crop, scales, class weights, training time, val
  mIoU), then per-class IoU, mIoU, mBoundaryIoU and trimap accuracy of the runs side by side;
* ``docs/figures/camvid_frames.png``: val frames as image | ground truth | one column per run.

    python benchmarks/camvid.py --data-root ../shared/datasets/camvid \
        --run lw_refinenet_mbv2=runs/lw_refinenet_mbv2_camvid --run fcn32_mbv2=runs/fcn32_mbv2_camvid

The test split is not read here: recipes are chosen on val only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_revision, machine_description, write_section  # noqa: E402

from refineseg.data import CAMVID_CLASSES, CAMVID_PALETTE, build_dataset  # noqa: E402
from refineseg.report.visualize import colorize  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "camvid_frames.png"
SUMMARY_KEYS = ("mIoU", "aAcc", "mAcc", "mBoundaryIoU")
TRIMAP_WIDTHS = (2, 4, 8, 16)


def evaluate_run(run: Path, data_root: str, checkpoint: str = "best") -> dict:
    """``refineseg evaluate`` of ``run/checkpoint`` on val, predictions saved; returns its metrics.json."""
    out = run / f"eval_val_{checkpoint}"
    if not (out / "metrics.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "refineseg",
                "evaluate",
                "--checkpoint",
                str(run / checkpoint),
                "--dataset",
                "camvid",
                "--data-root",
                data_root,
                "--split",
                "val",
                "--out",
                str(out),
                "--save-predictions",
                "--precision",
                "fp32",
            ],
            check=True,
        )
    return json.loads((out / "metrics.json").read_text()) | {"_out": str(out)}


def run_row(name: str, run: Path, metrics: dict) -> dict:
    """The recipe of a run (its config.yaml) and its val mIoU."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = max((r.get("iter", 0) for r in log), default=0)
    # wall time from the run's start (config.yaml) to its last checkpoint, interruptions included
    hours = ((run / "last" / "model.safetensors").stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 3600
    return {
        "run": name,
        "model": config["model"],
        "steps": f"{steps}/{config['iters']}",
        "batch": config["batch_size"],
        "crop": config["crop"],
        "scales": f"{config['scale_min']}-{config['scale_max']}",
        "class weights": config["class_weights"],
        "wall hours": f"{hours:.2f}",
        "val mIoU": f"{100 * metrics['mIoU']:.2f}",
    }


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def comparison_table(results: dict[str, dict]) -> str:
    """Per-class IoU and Boundary IoU, the summary metrics and the trimap accuracy (%), one column per run."""

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    def per_class(metrics: dict, name: str, key: str) -> float | None:
        return next((c.get(key) for c in metrics["per_class"] if c["name"] == name), None)

    def trimap(metrics: dict, width: int) -> float | None:
        widths = metrics.get("trimap", {}).get("widths", [])
        return metrics["trimap"]["accuracy"][widths.index(width)] if width in widths else None

    rows = [
        {"metric": f"IoU {c}", **{n: pct(per_class(m, c, "IoU")) for n, m in results.items()}} for c in CAMVID_CLASSES
    ]
    rows += [{"metric": key, **{n: pct(m.get(key)) for n, m in results.items()}} for key in SUMMARY_KEYS]
    rows += [
        {"metric": f"Boundary IoU {c}", **{n: pct(per_class(m, c, "boundary_iou")) for n, m in results.items()}}
        for c in CAMVID_CLASSES
    ]
    rows += [
        {"metric": f"trimap accuracy, {w} px", **{n: pct(trimap(m, w)) for n, m in results.items()}}
        for w in TRIMAP_WIDTHS
    ]
    return markdown(rows)


def frames_figure(results: dict[str, dict], data_root: str, indices: list[int], side: int = 320) -> Path:
    """image | ground truth | each run's prediction, one row per val frame."""
    val = build_dataset("camvid", data_root, "val")
    columns = 2 + len(results)
    height = side * 3 // 4
    sheet = Image.new("RGB", (columns * (side + 4), 24 + len(indices) * (height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(["image", "ground truth", *results]):
        draw.text((j * (side + 4) + 4, 6), title, fill="black")
    for i, index in enumerate(indices):
        image, mask = val.load_sample(index)
        panels = [image, colorize(mask, CAMVID_PALETTE)]
        for metrics in results.values():
            labels = np.asarray(Image.open(Path(metrics["_out"]) / "predictions" / f"{val.sample_name(index)}.png"))
            panels.append(colorize(labels, CAMVID_PALETTE))
        for j, panel in enumerate(panels):
            tile = Image.fromarray(panel).resize((side, height), Image.NEAREST if j else Image.BILINEAR)
            sheet.paste(tile, (j * (side + 4), 24 + i * (height + 4)))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(FIGURE)
    return FIGURE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="CamVid root (train/, val/, trainannot/, valannot/)")
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR", help="a training run folder")
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 21, 80], help="val indices for the figure")
    parser.add_argument("--notes", type=Path, help="markdown put before the tables (how the recipe was chosen)")
    args = parser.parse_args()
    runs = {name: Path(path) for name, _, path in (r.partition("=") for r in args.run)}
    results = {name: evaluate_run(run, args.data_root) for name, run in runs.items()}
    recipes = markdown([run_row(name, run, results[name]) for name, run in runs.items()])
    table = comparison_table(results)
    print(recipes, table, sep="\n\n")
    figure = frames_figure(results, args.data_root, args.frames)
    header = (
        f"Machine: {machine_description()}; commit {git_revision()}. Val split (101 frames, 480x360, whole "
        f"frames, fp32, void ignored); each run's `best` checkpoint.\n\n"
    )
    notes = args.notes.read_text().strip() + "\n\n" if args.notes else ""
    figure_link = f"![CamVid val frames: image, ground truth, predictions]({figure.relative_to(ROOT)})"
    body = [
        f"## CamVid\n\n{header}{notes}".rstrip(),
        f"### Recipes (val)\n\n{recipes}",
        f"### LW-RefineNet vs FCN-32s (val)\n\n{table}",
        figure_link,
    ]
    write_section("camvid", "\n\n".join(body))


if __name__ == "__main__":
    main()
