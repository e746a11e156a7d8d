"""Per-variant parameters, GMACs at 512×512 and CPU latency (batch 1), written to BENCHMARKS.md.

python benchmarks/models.py [--size 512] [--repeat 5] [--models lw_refinenet50 ...]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, median_seconds, write_section  # noqa: E402

import refineseg  # noqa: E402
from refineseg.models.profiling import summarize_model  # noqa: E402
from refineseg.report.visualize import model_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per model (median reported)")
    parser.add_argument("--models", nargs="*", default=refineseg.list_models())
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    x = torch.randn(1, 3, args.size, args.size)
    rows = []
    for name in args.models:
        row = summarize_model(name, height=args.size, width=args.size)
        model = refineseg.create_model(name, num_classes=21).eval()
        with torch.inference_mode():
            seconds = median_seconds(functools.partial(model, x), warmup=1, repeat=args.repeat)  # binds this model
        row["GMACs"] = round(row["GMACs"], 2)
        row["CPU ms"] = round(seconds * 1000, 1)
        row["GMAC/s"] = round(row["GMACs"] / seconds, 1)
        rows.append(row)
        print(f"{name}: {row['CPU ms']} ms", flush=True)
        del model

    table = model_table(rows, ["model", "params", "GMACs", "CPU ms", "GMAC/s", "output"])
    print(table)
    if not args.no_write:
        body = (
            f"## Models: size, compute and eager CPU latency\n\n"
            f"`python benchmarks/models.py` — {args.size}×{args.size}, batch 1, fp32 eager, median of "
            f"{args.repeat} runs after one warm-up, 21 classes. Machine: {machine_description()}; "
            f"commit {git_revision()}.\n\n{table}\n"
        )
        write_section("models", body)
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
