"""Time the fail-fast data check on generated VOC-sized samples: a first check and a repeat.

    python benchmarks/data_check.py [--samples 10000] [--dir DIR] [--workers N] [--full] [--no-write]

Generates ``--samples`` 500×375 JPEG photos (smooth colour fields plus noise) and palette PNG
masks (a few VOC classes with 255 borders) in the folder layout, in parallel; with ``--dir`` the
data is kept and reused by the next run. Then times, with the data-check cache in a fresh
temporary ``REFINESEG_HOME``: listing the dataset, the first check (nothing remembered), a repeat
(nothing changed: only ``stat`` calls), and with ``--full`` the check-data pass (full decode and
statistics). Targets (issue 9): first check of 10,000 samples < 30 s, repeat < 2 s on 2 cores.
The generated files sit in the page cache, so the first check reads from memory, not the disk.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, write_section  # noqa: E402

from refineseg.data import VOC_CLASSES, VOC_PALETTE, FolderDataset  # noqa: E402
from refineseg.data.check import cache_file, check_dataset, default_workers  # noqa: E402
from refineseg.data.stats import dataset_statistics  # noqa: E402
from refineseg.report.visualize import model_table  # noqa: E402

W, H = 500, 375  # a typical PASCAL VOC image
TARGETS = {"first check": 30.0, "repeat": 2.0}


def write_sample(root: str, index: int) -> str:
    """One photo-like JPEG and its palette PNG mask; returns the stem."""
    rng = np.random.default_rng(index)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((W, H), Image.BILINEAR)
    photo = np.asarray(coarse, np.float32) + rng.normal(0, 8, (H, W, 3))
    stem = f"{index:06d}"
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(
        os.path.join(root, "images", stem + ".jpg"), quality=90
    )
    mask = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.integers(0, W - 100), rng.integers(0, H - 100)
        box = [int(x0), int(y0), int(x0 + rng.integers(60, 250)), int(y0 + rng.integers(60, 200))]
        cls = int(rng.integers(1, len(VOC_CLASSES)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=cls, outline=255, width=3)
    mask.putpalette([c for color in VOC_PALETTE for c in color] + [0] * (768 - 3 * len(VOC_PALETTE)))
    mask.save(os.path.join(root, "masks", stem + ".png"))
    return stem


def _write_range(root: str, start: int, stop: int) -> list[str]:
    return [write_sample(root, i) for i in range(start, stop)]


def generate(root: Path, samples: int, workers: int) -> float:
    """Write the dataset (skipped when ``root`` already holds this many samples); returns seconds."""
    split = root / "splits" / "train.txt"
    if split.is_file() and len(split.read_text().split()) == samples:
        return 0.0
    start = time.perf_counter()
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    step = max(1, math.ceil(samples / (workers * 8)))
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(
            _write_range,
            [str(root)] * math.ceil(samples / step),
            range(0, samples, step),
            [min(samples, s + step) for s in range(0, samples, step)],
        )
        stems = [stem for part in parts for stem in part]
    lines = [f"- {{name: {n}, color: [{', '.join(map(str, c))}]}}" for n, c in zip(VOC_CLASSES, VOC_PALETTE)]
    (root / "classes.yaml").write_text("\n".join(lines) + "\n")
    split.write_text("".join(s + "\n" for s in stems))
    return time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=None, help="check processes (default: all cores)")
    parser.add_argument("--full", action="store_true", help="also time check-data's full decode and statistics")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="refineseg-datacheck-"))
    home = tempfile.mkdtemp(prefix="refineseg-home-")
    os.environ["REFINESEG_HOME"] = home  # a cache of this run's own
    try:
        gen_s = generate(root, args.samples, default_workers())
        print(f"generated {args.samples} samples in {gen_s:.1f} s" if gen_s else f"reusing {root}")
        size_mb = sum(f.stat().st_size for d in ("images", "masks") for f in (root / d).iterdir()) / 1e6
        load_before = os.getloadavg()
        dataset, list_s = timed(lambda: FolderDataset(root, "train"))
        cache_file(dataset).unlink(missing_ok=True)
        first, first_s = timed(lambda: check_dataset(dataset, workers=args.workers))
        repeat, repeat_s = timed(lambda: check_dataset(FolderDataset(root, "train"), workers=args.workers))
        rows = [
            {"step": "list the dataset (FolderDataset)", "samples": len(dataset), "checked": None, "s": list_s},
            {"step": "first check", "samples": first.total, "checked": first.checked, "s": first_s},
            {
                "step": "repeat (nothing changed)",
                "samples": repeat.total,
                "checked": repeat.checked,
                "s": repeat_s - list_s,
            },
        ]
        if args.full:
            _, full_s = timed(lambda: dataset_statistics(dataset, workers=args.workers))
            rows.append(
                {
                    "step": "check-data (full decode + statistics)",
                    "samples": len(dataset),
                    "checked": len(dataset),
                    "s": full_s,
                }
            )
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        row["ms/sample"] = 1000 * row["s"] / max(1, row["samples"])
        target = TARGETS.get(row["step"].split(" (")[0])
        row["target"] = f"< {target:g} s: {'met' if row['s'] < target else 'MISSED'}" if target else ""
    table = model_table(rows, ["step", "samples", "checked", "s", "ms/sample", "target"])
    load = f"Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    print(table)
    print(load)
    if not args.no_write:
        workers = args.workers if args.workers is not None else default_workers()
        write_section(
            "data-check",
            (
                "## Data check before training (issue 9)\n\n"
                f"`python benchmarks/data_check.py --samples {args.samples}{' --full' if args.full else ''}` — "
                f"{args.samples:,} generated VOC-sized samples (500×375 JPEG quality 90 + palette PNG mask, "
                f"{size_mb:,.0f} MB in all), {workers} check process(es); the files were written shortly before, so "
                "they are read from the page cache, not the disk. First check: "
                "no cache file; repeat: a new `FolderDataset` and `check_dataset` with nothing changed (the listing "
                f"time, shown on its own row, subtracted). {load}. Machine: {machine_description()}; "
                f"commit {git_revision()}.\n\n{table}"
            ),
        )


if __name__ == "__main__":
    main()
