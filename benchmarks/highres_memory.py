"""Peak memory of tiled prediction on 2048², 8192² and 16384² images, written to BENCHMARKS.md.

Each size runs in a fresh process: read an uncompressed RGB TIFF (memory-mapped), segment it
with ``predict_tiled`` (lw_refinenet50, 21 classes, tile 1024, overlap 128) and write the label
TIFF. The process's peak RSS (``ru_maxrss``) is compared with the smallest size: the growth may
be at most the label map plus the image (1 + 3 bytes per pixel) plus 10%.

    python benchmarks/highres_memory.py [--sizes 2048 8192 16384] [--tile 1024] [--overlap 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, write_section  # noqa: E402

MODEL = "lw_refinenet50"


def write_test_image(path: Path, side: int) -> None:
    """An uncompressed side×side RGB TIFF with some structure, written in row blocks (low RAM)."""
    import tifffile

    image = tifffile.memmap(path, shape=(side, side, 3), dtype=np.uint8, photometric="rgb")
    x = (np.arange(side) % 256).astype(np.uint8)
    for y0 in range(0, side, 1024):
        rows = np.arange(y0, min(y0 + 1024, side))
        image[y0:y0 + len(rows), :, 0] = x[None, :]
        image[y0:y0 + len(rows), :, 1] = (rows % 256).astype(np.uint8)[:, None]
        image[y0:y0 + len(rows), :, 2] = ((rows[:, None] // 64 + np.arange(side)[None, :] // 64) % 2 * 255)
    image.flush()
    del image


def child(path: str, out: str, tile: int, overlap: int) -> None:
    """Runs in the measured process: prints one JSON line with the figures."""
    import torch

    import refineseg
    from refineseg.data import read_large_image, write_label_tiff
    from refineseg.inference.optimize import optimize_for_inference
    from refineseg.inference.tiling import predict_tiled

    torch.manual_seed(0)
    model = optimize_for_inference(refineseg.create_model(MODEL, num_classes=21).eval(), dtype=torch.bfloat16)
    image = read_large_image(path)
    start = time.perf_counter()
    labels = predict_tiled(model, image, tile=tile, overlap=overlap, progress=False)
    seconds = time.perf_counter() - start
    write_label_tiff(out, labels, model.config.palette)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, "seconds": seconds, "classes": int(labels.max()) + 1}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[2048, 8192, 16384])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.tile, args.overlap)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sorted(args.sizes):
            image_path, out_path = Path(tmp) / f"in_{side}.tif", Path(tmp) / f"out_{side}.tif"
            write_test_image(image_path, side)
            proc = subprocess.run([sys.executable, __file__, "--tile", str(args.tile), "--overlap", str(args.overlap),
                                   "--child", str(image_path), str(out_path)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"side": side, **result})
            print(f"{side}²: peak RSS {result['peak_rss_mib']:.0f} MiB, {result['seconds']:.0f} s", flush=True)
            image_path.unlink()
            out_path.unlink()

    base = rows[0]
    lines = ["| image | pixels | peak RSS (MiB) | growth vs smallest (MiB) | allowed growth (MiB) | within | seconds |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        extra_pixels = row["side"] ** 2 - base["side"] ** 2
        allowed = 4 * extra_pixels * 1.10 / 2**20  # label map (1 B/px) + RGB image (3 B/px), plus 10%
        growth = row["peak_rss_mib"] - base["peak_rss_mib"]
        ok = "yes" if growth <= allowed else "NO"
        lines.append(f"| {row['side']}×{row['side']} | {row['side'] ** 2:,} | {row['peak_rss_mib']:,.0f} | "
                     f"{growth:,.0f} | {allowed:,.0f} | {ok} | {row['seconds']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("highres", (
            "## High-resolution tiled prediction: peak memory\n\n"
            f"`python benchmarks/highres_memory.py` — {MODEL} (random weights, 21 classes, BN folded, "
            f"channels-last, bf16 autocast for speed), tile {args.tile}, overlap {args.overlap}, uncompressed RGB TIFF input "
            f"(memory-mapped) and palette TIFF output, one process per size; peak RSS = `ru_maxrss`. "
            f"Allowed growth = (1 + 3 bytes) × extra pixels × 1.1. Machine: {machine_description()}; "
            f"commit {git_revision()}.\n\n{table}\n"))
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
