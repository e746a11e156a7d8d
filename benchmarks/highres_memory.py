"""Peak memory of tiled prediction on 2048², 8192² and 16384² images, written to BENCHMARKS.md.

Each size runs in a fresh process what ``refineseg predict --tile 1024`` runs for one file
(``predict_file``): read an uncompressed RGB TIFF (memory-mapped), segment it with
``predict_tiled`` (lw_refinenet50, 21 classes, BN folded, channels-last, ``--precision auto``:
bf16 where native, tile 1024, overlap 128), write the label TIFF and the overlay PNG, drawn on a
preview of at most ``PREVIEW_SIDE`` (4096) px a side. The process's peak RSS (``ru_maxrss``) is
compared with the smallest size's: the growth may be at most the label map plus the image plus
the preview's RGB pixels (1 + 3 bytes per pixel of the image, 3 per preview pixel) plus 10%.

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
        image[y0 : y0 + len(rows), :, 0] = x[None, :]
        image[y0 : y0 + len(rows), :, 1] = (rows % 256).astype(np.uint8)[:, None]
        image[y0 : y0 + len(rows), :, 2] = (rows[:, None] // 64 + np.arange(side)[None, :] // 64) % 2 * 255
    image.flush()
    del image


def child(path: str, out: str, tile: int, overlap: int) -> None:
    """Runs in the measured process: prints one JSON line with the figures."""
    import torch

    import refineseg
    from refineseg.inference.options import InferenceOptions
    from refineseg.inference.predict import predict_file

    torch.manual_seed(0)
    options = InferenceOptions()  # the defaults of `refineseg predict`: fast path, --precision auto
    model = options.prepare(refineseg.create_model(MODEL, num_classes=21).eval())
    start = time.perf_counter()
    predict_file(model, Path(path), Path(out), Path(out).with_suffix(".png"), tile=tile, overlap=overlap)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, "seconds": seconds, "precision": options.precision}))


def preview_pixels(side: int, preview_side: int = 4096) -> int:
    """Pixels of the overlay's preview of a side×side image (``predict``'s PREVIEW_SIDE)."""
    step = -(-side // preview_side)
    return (-(-side // step)) ** 2


def measure(sizes: list[int], tile: int, overlap: int) -> list[dict]:
    """One child process per size (smallest first): its peak RSS, seconds and precision."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sizes:
            image_path, out_path = Path(tmp) / f"in_{side}.tif", Path(tmp) / f"out_{side}.tif"
            write_test_image(image_path, side)
            command = [sys.executable, __file__, "--tile", str(tile), "--overlap", str(overlap)]
            proc = subprocess.run([*command, "--child", str(image_path), str(out_path)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"side": side, **result})
            print(f"{side}²: peak RSS {result['peak_rss_mib']:.0f} MiB, {result['seconds']:.0f} s", flush=True)
            image_path.unlink()
            out_path.unlink()
    return rows


def growth_table(rows: list[dict]) -> str:
    """The markdown table: each size's peak RSS growth over the smallest's against the allowed growth."""
    base = rows[0]
    lines = [
        "| image | pixels | preview | peak RSS (MiB) | growth vs smallest (MiB) | allowed growth (MiB) | within "
        "| seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        extra_pixels = row["side"] ** 2 - base["side"] ** 2
        extra_preview = preview_pixels(row["side"]) - preview_pixels(base["side"])
        # label map (1 B/px) + RGB image (3 B/px) + RGB preview (3 B per preview pixel), plus 10%
        allowed = (4 * extra_pixels + 3 * extra_preview) * 1.10 / 2**20
        growth = row["peak_rss_mib"] - base["peak_rss_mib"]
        ok = "yes" if growth <= allowed else "NO"
        preview = int(preview_pixels(row["side"]) ** 0.5)
        lines.append(
            f"| {row['side']}×{row['side']} | {row['side'] ** 2:,} | {preview}×{preview} | "
            f"{row['peak_rss_mib']:,.0f} | {growth:,.0f} | {allowed:,.0f} | {ok} | {row['seconds']:,.0f} |"
        )
    return "\n".join(lines)


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

    rows = measure(sorted(args.sizes), args.tile, args.overlap)
    table = growth_table(rows)
    print(table)
    if not args.no_write:
        write_section(
            "highres",
            (
                "## High-resolution tiled prediction: peak memory\n\n"
                f"`python benchmarks/highres_memory.py` — what `refineseg predict --tile {args.tile}` runs for one "
                f"file: {MODEL} (random weights, 21 classes, the default fast path: BN folded, channels-last, "
                f"`--precision auto` = {rows[0]['precision']} here), tile {args.tile}, overlap {args.overlap}, "
                "uncompressed RGB TIFF input (memory-mapped), palette TIFF labels and the overlay PNG drawn on a "
                "preview of at most 4096 px a side; one process per size; peak RSS = `ru_maxrss`. "
                "Allowed growth = ((1 + 3) bytes × extra image pixels + 3 bytes × extra preview pixels) × 1.1. "
                f"Machine: {machine_description()}; commit {git_revision()}.\n\n{table}\n"
            ),
        )
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
