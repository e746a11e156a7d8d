"""``--precision auto`` (the default of evaluate, predict and serve): labels and speed, written to BENCHMARKS.md.

1. Label agreement on real frames: every CamVid val frame (101, 480×360; void ignored) through the
   plain model in eager fp32 and through the default path (``InferenceOptions()``: BN folded,
   channels-last, ``--precision auto``, which is bf16 on CPUs with native bf16 and fp32 elsewhere):
   the share of pixels with the same label, and both paths' mIoU. The model is the CamVid
   checkpoint ``--checkpoint`` (default ``/work/runs/lw_camvid/best``; copied first, it may be
   rewritten while this runs) when it exists, else an ImageNet-initialised lw_refinenet_mbv2
   (random decoder): the section says which.
2. Speed: ``--speed-model`` (refinenet101) at ``--size``² (512), batch 1, random weights, eager fp32
   against the default path and the fp32 fast path, in one process, in alternating rounds (the
   machine may be shared: every path sees the same load), median and fastest ms, with the load average.

Targets: agreement ≥ 99.5%, |mIoU difference| ≤ 0.2 points, default path ≥ 2× eager fp32.

    python benchmarks/precision.py [--data-root /work/shared/datasets/camvid] [--rounds 7]
                                   [--agreement-json FILE] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, write_section  # noqa: E402

import refineseg  # noqa: E402
from refineseg.data import CAMVID_CLASSES, CAMVID_PALETTE, build_dataset, eval_transform  # noqa: E402
from refineseg.inference.options import InferenceOptions  # noqa: E402

IGNORE = 255


def load_camvid_model(checkpoint: Path) -> tuple[torch.nn.Module, str]:
    """The checkpoint (read from a copy) if it exists, else an ImageNet-initialised lw_refinenet_mbv2; and a note."""
    if (checkpoint / "model.safetensors").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(shutil.copytree(checkpoint, Path(tmp) / "best"))
            model = refineseg.from_pretrained(copy)
            val = json.loads((copy / "metrics.json").read_text()) if (copy / "metrics.json").is_file() else {}
        records = checkpoint.parent / "metrics.jsonl"
        step = None
        if records.is_file():
            scored = [json.loads(line) for line in records.read_text().splitlines() if '"mIoU"' in line]
            step = max(scored, key=lambda r: r["mIoU"])["iter"] if scored else None
        note = (
            f"`{checkpoint}` ({model.config.name}, the CamVid run's best checkpoint when measured"
            f"{f': step {step}' if step else ''}, val mIoU {100 * val['mIoU']:.2f} by its own evaluation)"
            if val
            else f"`{checkpoint}` ({model.config.name})"
        )
        return model.eval(), note
    model = refineseg.create_model(
        "lw_refinenet_mbv2",
        num_classes=len(CAMVID_CLASSES),
        backbone_weights="imagenet",
        class_names=list(CAMVID_CLASSES),
        palette=[tuple(c) for c in CAMVID_PALETTE],
    )
    return model.eval(), "an ImageNet-initialised lw_refinenet_mbv2 (random decoder: no CamVid checkpoint yet)"


def miou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in the labels or the predictions."""
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def agreement(model: torch.nn.Module, root: str, limit: int | None) -> dict:
    """Eager fp32 vs the default path on CamVid val: pixel agreement, both mIoUs, ms/frame of each."""
    options = InferenceOptions()
    fast = options.prepare(model)  # resolves --precision auto (and logs it)
    dataset = build_dataset("camvid", root, "val", eval_transform(model.config.mean, model.config.std))
    count = len(dataset) if limit is None else min(limit, len(dataset))
    k = model.config.num_classes
    matrices = {"fp32": np.zeros((k, k), np.int64), "default": np.zeros((k, k), np.int64)}
    same = valid_same = pixels = valid_pixels = 0
    seconds = {"fp32": 0.0, "default": 0.0}
    with torch.inference_mode():
        for i in range(count):
            x, target = dataset[i]
            target = np.asarray(target)
            labels = {}
            for name, runner in (("fp32", model), ("default", fast)):
                start = time.perf_counter()
                labels[name] = runner(x[None]).argmax(1)[0].numpy()
                seconds[name] += time.perf_counter() - start
            valid = target != IGNORE
            for name, pred in labels.items():
                matrices[name] += np.bincount(
                    k * target[valid].astype(np.int64) + pred[valid], minlength=k * k
                ).reshape(k, k)
            equal = labels["fp32"] == labels["default"]
            same, pixels = same + int(equal.sum()), pixels + equal.size
            valid_same, valid_pixels = valid_same + int(equal[valid].sum()), valid_pixels + int(valid.sum())
    return {
        "precision": options.precision,
        "frames": count,
        "size": tuple(x.shape[-2:]),
        "agreement": same / pixels,
        "valid_agreement": valid_same / valid_pixels,
        "miou_fp32": miou(matrices["fp32"]),
        "miou_default": miou(matrices["default"]),
        "ms_fp32": 1000 * seconds["fp32"] / count,
        "ms_default": 1000 * seconds["default"] / count,
    }


def speed(name: str, size: int, rounds: int) -> dict:
    """Median and fastest ms of eager fp32, the fp32 fast path and the default path, in alternating rounds."""
    torch.manual_seed(0)
    model = refineseg.create_model(name, num_classes=21).eval()
    default_options = InferenceOptions()
    runners = {
        "eager fp32": model,
        "folded+CL fp32": InferenceOptions(precision="fp32").prepare(model),
        "default": default_options.prepare(model),
    }
    x = torch.randn(1, 3, size, size)
    times: dict[str, list[float]] = {path: [] for path in runners}
    with torch.inference_mode():
        for runner in runners.values():
            runner(x)  # warm-up
        for r in range(rounds):
            for path in list(runners) if r % 2 == 0 else list(runners)[::-1]:
                start = time.perf_counter()
                runners[path](x)
                times[path].append(time.perf_counter() - start)
    ms = {path: 1000 * statistics.median(t) for path, t in times.items()}
    best = {path: 1000 * min(t) for path, t in times.items()}
    return {
        "model": name,
        "size": size,
        "rounds": rounds,
        "precision": default_options.precision,
        "ms": ms,
        "speedup": {path: ms["eager fp32"] / m for path, m in ms.items()},
        "best_ms": best,
        "best_speedup": {path: best["eager fp32"] / m for path, m in best.items()},
    }


def body(a: dict, s: dict, note: str) -> str:
    """The BENCHMARKS.md section."""
    ok = a["agreement"] >= 0.995 and abs(a["miou_default"] - a["miou_fp32"]) <= 0.002
    fast_enough = s["speedup"]["default"] >= 2.0
    h, w = a["size"]
    rows = "\n".join(
        f"| {s['model']} | {s['size']}×{s['size']} | {path} | {ms:,.0f} | {s['speedup'][path]:.2f}× | "
        f"{s['best_ms'][path]:,.0f} | {s['best_speedup'][path]:.2f}× |"
        for path, ms in s["ms"].items()
    )
    return (
        "## Inference precision: `--precision auto` (issue 19)\n\n"
        "`python benchmarks/precision.py` — evaluate, predict and serve run `--precision auto` by default: bf16 "
        "autocast where the hardware computes bfloat16 natively (CPU AVX512_BF16 / AMX-BF16 / Arm BF16 with "
        "oneDNN, CUDA compute capability 8.0+: the rule of training's `--amp auto`), fp32 elsewhere. Here it "
        f"resolves to **{a['precision']}**. Machine: {machine_description()}; commit {git_revision()} "
        "(+ working tree).\n\n"
        f"Labels on real frames: all {a['frames']} CamVid val frames ({w}×{h}, whole image, void ignored), "
        f"model {note}; eager fp32 vs the default path (BN folded, channels-last, {a['precision']}):\n\n"
        "| figure | eager fp32 | default path | target | met |\n| --- | ---: | ---: | --- | --- |\n"
        f"| label agreement, all pixels | – | {100 * a['agreement']:.2f}% | ≥ 99.5% | "
        f"{'yes' if a['agreement'] >= 0.995 else 'NO'} |\n"
        f"| label agreement, non-void pixels | – | {100 * a['valid_agreement']:.2f}% | | |\n"
        f"| val mIoU | {100 * a['miou_fp32']:.2f} | {100 * a['miou_default']:.2f} "
        f"({100 * (a['miou_default'] - a['miou_fp32']):+.2f}) | within 0.2 | "
        f"{'yes' if abs(a['miou_default'] - a['miou_fp32']) <= 0.002 else 'NO'} |\n"
        f"| ms/frame (this model) | {a['ms_fp32']:,.0f} | {a['ms_default']:,.0f} "
        f"({a['ms_fp32'] / a['ms_default']:.2f}×) | | |\n\n"
        f"Speed: {s['model']}, random weights, batch 1, {s['rounds']} alternating rounds after a warm-up, median "
        f"and fastest; load average {s['load_before']:.2f} before and {s['load_after']:.2f} after (only the "
        "ratios of one run compare: on a shared machine the fastest round is the one least slowed by others):\n\n"
        "| model | input | path | median ms | vs eager fp32 | fastest ms | vs eager fp32 |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n\n"
        f"Targets: agreement and mIoU {'met' if ok else 'NOT met'}; default path ≥ 2× eager fp32: "
        f"{'met' if fast_enough else 'NOT met'} ({s['speedup']['default']:.2f}× median, "
        f"{s['best_speedup']['default']:.2f}× fastest).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="/work/shared/datasets/camvid")
    parser.add_argument("--checkpoint", type=Path, default=Path("/work/runs/lw_camvid/best"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many val frames (default: all)")
    parser.add_argument("--speed-model", default="refinenet101")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--agreement-json",
        type=Path,
        help="keep the label figures in this file; when it exists, reuse them and measure only the speed",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if args.agreement_json and args.agreement_json.is_file():  # figures of an earlier run: speed only
        a, note = (lambda d: (d["agreement"], d["note"]))(json.loads(args.agreement_json.read_text()))
    else:
        model, note = load_camvid_model(args.checkpoint)
        a = agreement(model, args.data_root, args.limit)
        if args.agreement_json:
            args.agreement_json.write_text(json.dumps({"agreement": a, "note": note}))
    print(json.dumps(a), flush=True)
    load_before = os.getloadavg()[0]
    s = speed(args.speed_model, args.size, args.rounds)
    s.update(load_before=load_before, load_after=os.getloadavg()[0])
    print(json.dumps(s), flush=True)
    text = body(a, s, note)
    print(text)
    if not args.no_write:
        write_section("precision", text)
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
