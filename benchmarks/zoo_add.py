"""Add a trained model to the model zoo (refineseg/models/zoo_weights/): weights, SHA-256, numbers, recipe.

    python benchmarks/zoo_add.py runs/lw_refinenet_mbv2_camvid/best \\
        --metrics runs/lw_refinenet_mbv2_camvid/eval/metrics.json \\
        --recipe configs/lw_refinenet_mbv2_camvid.yaml

``--metrics`` is the ``metrics.json`` that ``refineseg evaluate`` wrote for the checkpoint (float32, on
the val split). The weights are rounded to float16 and evaluated again with the same settings (the
``config`` recorded in that metrics.json); they ship as float16 only if val mIoU moves by less than
0.1 points, as float32 otherwise. ``--fp16-metrics FILE`` gives that second evaluation instead of
running it; ``--keep-fp32`` skips it. The entry's name defaults to the recipe's file stem, its
commit to ``git rev-parse HEAD`` (pass ``--commit`` with the commit that trained the model).
Then ``git add refineseg/models/zoo_weights`` and check ``refineseg zoo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refineseg.cli.evaluate import EvalConfig, run_evaluate  # noqa: E402
from refineseg.errors import RefineSegError, one_line  # noqa: E402
from refineseg.models import zoo  # noqa: E402
from refineseg.utils.config import config_from_values  # noqa: E402


def read_json(path: str | Path) -> dict[str, Any]:
    """A metrics.json as a dict (RefineSegError naming the file when it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RefineSegError(f"{path}: cannot read metrics ({e})") from e
    if not isinstance(data, dict):
        raise RefineSegError(f"{path}: expected a JSON object")
    return data


def git_commit() -> str:
    """The full hash of HEAD, or ``unknown`` outside a git checkout."""
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate_fp16(checkpoint: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the float16-rounded checkpoint with the settings recorded in the float32 ``metrics``."""
    values = metrics.get("config")
    if not isinstance(values, dict):
        raise RefineSegError(
            "the metrics.json records no evaluation config (not from `refineseg evaluate`?); "
            "pass --fp16-metrics FILE or --keep-fp32"
        )
    with tempfile.TemporaryDirectory(prefix="refineseg-zoo-") as tmp:
        half = zoo.write_checkpoint(checkpoint, Path(tmp) / "fp16", "float16")
        known = {f.name for f in dataclasses.fields(EvalConfig)}  # options this version still has
        values = {
            **{k: v for k, v in values.items() if k in known},
            "checkpoint": str(half),
            "out": str(Path(tmp) / "eval"),
            "confusion_png": False,
            "report": False,
            "save_predictions": False,
        }
        return run_evaluate(config_from_values(EvalConfig, values, "metrics.json config"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="save_pretrained folder of the trained model (e.g. RUN/best)")
    parser.add_argument("--metrics", required=True, help="its metrics.json from `refineseg evaluate` (val split)")
    parser.add_argument("--recipe", required=True, help="the training config YAML it was trained with")
    parser.add_argument("--name", default=None, help="zoo name (default: the recipe's file stem)")
    parser.add_argument(
        "--fp16-metrics",
        default=None,
        help="metrics.json of the same evaluation of the float16 weights (default: run it now)",
    )
    parser.add_argument("--keep-fp32", action="store_true", help="ship float32 weights without trying float16")
    parser.add_argument("--commit", default=None, help="git commit that trained the model (default: HEAD)")
    parser.add_argument("--licence", default=None, help="licence note (default: known per dataset, e.g. CamVid)")
    parser.add_argument("--notes", default="", help="free text shown with `refineseg zoo NAME`")
    parser.add_argument("--zoo-dir", default=None, help="zoo folder (default: the package's zoo_weights/)")
    parser.add_argument("--replace", action="store_true", help="overwrite an entry of the same name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = read_json(args.metrics)
        if metrics.get("checkpoint") and Path(metrics["checkpoint"]).resolve() != Path(args.checkpoint).resolve():
            print(f"note: {args.metrics} was measured on {metrics['checkpoint']}, not {args.checkpoint}")
        fp16 = None
        if args.fp16_metrics:
            fp16 = read_json(args.fp16_metrics)
        elif not args.keep_fp32:
            fp16 = evaluate_fp16(args.checkpoint, metrics)
        source = zoo.EntrySource(
            checkpoint=args.checkpoint,
            metrics=metrics,
            recipe_file=args.recipe,
            fp16_metrics=fp16,
            name=args.name,
            commit=args.commit or git_commit(),
            licence=args.licence,
            notes=args.notes,
        )
        entry = zoo.add_entry(source, root=args.zoo_dir, replace=args.replace)
    except RefineSegError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    info = entry.evaluation
    fp16_text = f", float16 {100 * info['fp16_mIoU']:.2f}" if "fp16_mIoU" in info else ""
    print(
        f"{entry.name}: {entry.precision} weights (val mIoU float32 {100 * info['fp32_mIoU']:.2f}{fp16_text}), "
        f"SHA-256 {entry.sha256}"
    )
    print(
        f"wrote {Path(args.zoo_dir or zoo.zoo_dir()) / entry.directory} and {zoo.INDEX_NAME}; "
        "check `refineseg zoo`, then git add the zoo folder"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
