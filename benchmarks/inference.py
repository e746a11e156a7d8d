"""Inference and training speed/memory of the fast paths, written to BENCHMARKS.md.

For lw_refinenet50, lw_refinenet_mbv2 and refinenet101 at 512×512 (and 1024×2048 for the LW
models), batch 1: ms/image of plain eager fp32, each fast path of ``optimize_for_inference``
and onnxruntime; peak RSS; achieved GFLOP/s against the machine's peak, measured in the same
run as a large 3×3 convolution. Then training-step throughput and peak RSS with and without
``--grad-checkpointing``. Every configuration runs in its own process so peak RSS is its own.

``--device cuda`` measures the GPU instead (its own BENCHMARKS.md section): batch 1 and 8, eager
fp32 and ``optimize_for_inference`` in fp32, bf16 and fp16; images/s and peak GPU memory.

``--int8`` measures only onnxruntime int8 (``refineseg export --int8``, calibrated on synthetic
scenes) against onnxruntime fp32 and eager fp32 in the same process, for lw_refinenet50 and
lw_refinenet_mbv2 at 512×512, with onnxruntime's per-operator profile of the int8 model and the
load average (its own BENCHMARKS.md section).

    python benchmarks/inference.py [--quick] [--repeat 5] [--no-write] [--device cuda | --int8]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, median_seconds, write_section  # noqa: E402

PATHS = [
    "eager fp32",
    "folded+CL fp32",
    "folded+CL+compile fp32",
    "folded+CL bf16",
    "onnxruntime fp32",
    "onnxruntime int8",
]
INT8_PATHS = ["eager fp32", "onnxruntime fp32", "onnxruntime int8"]
INT8_CALIBRATION = 8  # synthetic scenes the int8 rows are calibrated on (timing does not depend on them)
GPU_PATHS = ["eager fp32", "folded+CL fp32", "folded+CL bf16", "folded+CL fp16"]
GPU_BATCHES = (1, 8)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def conv_peak_gflops(repeat: int) -> float:
    """fp32 GFLOP/s of a large 3×3 convolution (256→256, 4×256×128×128), channels-last."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 256, 128, 128).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = median_seconds(lambda: conv(x), warmup=2, repeat=repeat)
    flops = 2 * 256 * 256 * 9 * 4 * 128 * 128
    return flops / seconds / 1e9


def run_inference(spec: dict) -> dict:
    import torch

    import refineseg
    from refineseg.inference.optimize import optimize_for_inference
    from refineseg.models.profiling import count_macs

    torch.manual_seed(0)
    model = refineseg.create_model(spec["model"], num_classes=21).eval()
    h, w = spec["height"], spec["width"]
    x = torch.randn(1, 3, h, w)
    path = spec["path"]
    if path == "eager fp32":
        runner = model
    elif path.startswith("onnxruntime"):
        from refineseg.inference.export import OnnxSegmenter, export_onnx

        onnx_path = export_onnx(model, Path(tempfile.mkdtemp()) / "model.onnx", height=h, width=w)
        if path == "onnxruntime int8":
            onnx_path = quantized(onnx_path, h, w, INT8_CALIBRATION)
        runner = OnnxSegmenter(onnx_path)
    else:
        runner = optimize_for_inference(
            model,
            fold_bn=True,
            channels_last=True,
            compile="compile" in path,
            dtype=torch.bfloat16 if "bf16" in path else None,
        )
    with torch.inference_mode():
        start = time.perf_counter()
        runner(x)  # warm-up (and compilation)
        first = time.perf_counter() - start
        seconds = median_seconds(lambda: runner(x), warmup=1, repeat=spec["repeat"])
    macs = count_macs(model, h, w)
    return {"ms": seconds * 1000, "first_ms": first * 1000, "gflops": 2 * macs / seconds / 1e9, "peak_mib": _peak_mib()}


def run_int8(spec: dict) -> dict:
    """ms/image of eager fp32, onnxruntime fp32 and int8 in one process, and both ONNX models' operator profiles.

    Each path runs a block (a warm-up call, which also outlasts the other engine's spin-waiting
    threads, then ``repeat`` timed calls), in two rounds of opposite order; median of both rounds."""
    import statistics

    import torch

    import refineseg
    from refineseg.inference.export import OnnxSegmenter, export_onnx

    torch.manual_seed(0)
    model = refineseg.create_model(spec["model"], num_classes=21).eval()
    h, w = spec["height"], spec["width"]
    fp32_path = export_onnx(model, Path(tempfile.mkdtemp()) / "model.onnx", height=h, width=w)
    int8_path = quantized(fp32_path, h, w, spec["calibration"])
    runners = {
        "eager fp32": model,
        "onnxruntime fp32": OnnxSegmenter(fp32_path),
        "onnxruntime int8": OnnxSegmenter(int8_path),
    }
    x = torch.randn(1, 3, h, w)
    times: dict[str, list[float]] = {path: [] for path in runners}
    with torch.inference_mode():
        for order in (list(runners), list(runners)[::-1]):
            for path in order:
                runners[path](x)  # warm-up
                for _ in range(spec["repeat"]):
                    start = time.perf_counter()
                    runners[path](x)
                    times[path].append(time.perf_counter() - start)
    return {
        "ms": {path: 1000 * statistics.median(t) for path, t in times.items()},
        "best_ms": {path: 1000 * min(t) for path, t in times.items()},
        "profile": op_profile(int8_path, h, w),
        "fp32_profile": op_profile(fp32_path, h, w),
    }


def quantized(onnx_path: Path, height: int, width: int, samples: int) -> Path:
    """The int8 version of an exported model, calibrated on ``samples`` synthetic scenes of at most 512²
    (the calibration run holds every intermediate tensor of one image)."""
    from refineseg.data import SyntheticSegmentation, write_image
    from refineseg.inference.export import OnnxSegmenter
    from refineseg.inference.quantize import quantize_onnx

    calibration = onnx_path.parent / "calibration"
    calibration.mkdir()
    size = (min(height, 512), min(width, 512))
    scenes = SyntheticSegmentation("train", num_samples=samples, size=size)
    for i in range(samples):
        write_image(calibration / f"{i:03d}.png", scenes.load_sample(i)[0])
    config = OnnxSegmenter(onnx_path).config
    return quantize_onnx(
        onnx_path,
        onnx_path.with_name("model.int8.onnx"),
        calibration,
        config.mean,
        config.std,
        samples,
        height=size[0],
        width=size[1],
    )


def op_profile(onnx_path: Path, height: int, width: int, runs: int = 3) -> dict[str, float]:
    """Share of onnxruntime's kernel time per operator type (after its graph fusions), over ``runs`` calls."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_path.with_name("profile"))
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    for _ in range(runs + 1):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"]
    total = sum(totals.values()) or 1.0
    return {op: t / total for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def run_training(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    import refineseg
    from refineseg.models.grad_checkpointing import enable_grad_checkpointing

    torch.manual_seed(0)
    model = refineseg.create_model(spec["model"], num_classes=21).train()
    if spec["checkpointing"]:
        enable_grad_checkpointing(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(spec["batch"], 3, spec["crop"], spec["crop"])
    y = torch.randint(0, 21, (spec["batch"], spec["crop"], spec["crop"]))

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    seconds = median_seconds(step, warmup=1, repeat=spec["repeat"])
    return {"img_per_s": spec["batch"] / seconds, "s_per_step": seconds, "peak_mib": _peak_mib()}


def run_cuda(name: str, height: int, width: int, batch: int, path: str, repeat: int) -> dict:
    """Seconds per batch and peak GPU memory (MiB: weights + activations) of one GPU configuration."""
    import torch

    import refineseg
    from refineseg.inference.optimize import optimize_for_inference

    torch.manual_seed(0)
    model = refineseg.create_model(name, num_classes=21).eval()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[path.split()[-1]]
    if path.startswith("eager"):
        runner = model.to("cuda")
    else:
        runner = optimize_for_inference(model, fold_bn=True, channels_last=True, dtype=dtype, device="cuda")
    x = torch.randn(batch, 3, height, width, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def call() -> None:
        runner(x)
        torch.cuda.synchronize()

    try:
        with torch.inference_mode():
            seconds = median_seconds(call, warmup=3, repeat=repeat)
        return {"s": seconds, "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    finally:  # free this configuration's GPU memory before the next one
        model = runner = x = None
        gc.collect()
        torch.cuda.empty_cache()


def cuda_main(args: argparse.Namespace) -> None:
    """The GPU benchmark: every model × batch × path in this process, one table, one BENCHMARKS.md section."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    gpu = torch.cuda.get_device_name()
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    repeat = max(10, args.repeat)
    print(f"GPU: {gpu}", flush=True)
    cases = [("lw_refinenet50", 512, 512), ("lw_refinenet_mbv2", 512, 512), ("refinenet101", 512, 512)]
    if not args.quick:
        cases += [("lw_refinenet50", 1024, 2048), ("lw_refinenet_mbv2", 1024, 2048)]
    lines = [
        "| model | input | batch | path | ms/batch | images/s | speed-up | peak GPU memory (MiB) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, h, w in cases:
        for batch in GPU_BATCHES:
            eager_s = None
            for path in GPU_PATHS:
                row = f"| {name} | {h}×{w} | {batch} | {path} |"
                if "bf16" in path and not native_bf16:
                    lines.append(f"{row} no native bf16 on this GPU | | | |")
                    continue
                try:
                    r = run_cuda(name, h, w, batch, path, repeat)
                except Exception as e:  # out of memory, unsupported kernel ...: report it and go on
                    gc.collect()
                    torch.cuda.empty_cache()
                    lines.append(f"{row} failed: {type(e).__name__}: {str(e).splitlines()[0][:60]} | | | |")
                    print(lines[-1], flush=True)
                    continue
                eager_s = r["s"] if path == "eager fp32" else eager_s
                speedup = f"{eager_s / r['s']:.2f}×" if eager_s else "n/a"
                lines.append(f"{row} {r['s'] * 1000:,.1f} | {batch / r['s']:,.1f} | {speedup} | {r['peak_mib']:,.0f} |")
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        props = torch.cuda.get_device_properties(0)
        write_section(
            "inference-gpu",
            (
                "## GPU inference\n\n"
                f"`python benchmarks/inference.py --device cuda{' --quick' if args.quick else ''}` on **{gpu}** "
                f"({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}) — random weights, 21 classes, "
                f"cuDNN autotuning on; median of {repeat} synchronized calls after 3 warm-up calls. Speed-up is "
                f"against eager fp32 at the same batch; peak GPU memory is `torch.cuda.max_memory_allocated` "
                f"(weights + activations). bf16/fp16 run under autocast with float32 logits. "
                f"Machine: {machine_description()}; commit {git_revision()}.\n\n{table}\n"
            ),
        )
        print("wrote BENCHMARKS.md")


INT8_TARGETS = {"onnxruntime fp32": 1.5, "eager fp32": 4.0}  # lw_refinenet50 512²: int8 speed-up at least


def _profile_line(profile: dict[str, float], top: int = 8) -> str:
    return ", ".join(f"{op} {100 * share:.0f}%" for op, share in list(profile.items())[:top])


def int8_main(args: argparse.Namespace) -> None:
    """The int8 benchmark: per model, the three paths timed in one child process (see run_int8)."""
    import os

    repeat = 3 if args.quick else max(5, args.repeat)
    cases = [("lw_refinenet50", 512, 512)] + ([] if args.quick else [("lw_refinenet_mbv2", 512, 512)])
    load_before = os.getloadavg()
    lines = [
        "| model | input | path | ms/image: median | best | vs eager fp32: median | best "
        "| vs onnxruntime fp32: median | best |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes, verdicts = [], []
    for name, h, w in cases:
        spec = {
            "model": name,
            "height": h,
            "width": w,
            "repeat": repeat,
            "calibration": 2 if args.quick else INT8_CALIBRATION,
        }
        r = in_child("int8", spec)
        if "error" in r:
            lines.append(f"| {name} | {h}×{w} | all | failed: {r['error'][:80]} | | | | | |")
            print(lines[-1], flush=True)
            continue
        ms, best = r["ms"], r["best_ms"]
        for path in INT8_PATHS:
            lines.append(
                f"| {name} | {h}×{w} | {path} | {ms[path]:,.0f} | {best[path]:,.0f} | "
                f"{ms['eager fp32'] / ms[path]:.2f}× | {best['eager fp32'] / best[path]:.2f}× | "
                f"{ms['onnxruntime fp32'] / ms[path]:.2f}× | {best['onnxruntime fp32'] / best[path]:.2f}× |"
            )
            print(lines[-1], flush=True)
        notes.append(
            f"- {name}: onnxruntime kernel time by operator, int8 model: {_profile_line(r['profile'])}; "
            f"fp32 model: {_profile_line(r['fp32_profile'])}."
        )
        if name == "lw_refinenet50":
            for base, target in INT8_TARGETS.items():
                ratios = ms[base] / ms["onnxruntime int8"], best[base] / best["onnxruntime int8"]
                verdicts.append(
                    f"int8 vs {base}: {ratios[0]:.2f}× median, {ratios[1]:.2f}× best (target ≥ {target}×: "
                    f"{'met' if min(ratios) >= target else 'NOT met'})"
                )
    load_after = os.getloadavg()
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes + verdicts))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if not args.no_write:
        write_section(
            "inference-int8",
            (
                "## int8 inference on the CPU (onnxruntime)\n\n"
                f"`python benchmarks/inference.py --int8{' --quick' if args.quick else ''}` — batch 1, random weights, "
                f"21 classes; `refineseg export --int8` (onnxruntime static quantization, QDQ, uint8 activations with "
                f"MinMax ranges from {spec['calibration']} synthetic scenes, int8 per-channel weights, classifier kept "
                f"in fp32). The three paths run in one process, each timed in a block of a warm-up and {repeat} calls, "
                f"in two rounds of opposite order (median and best of the {2 * repeat} calls), so that a change of "
                f"load hits all of them alike. The machine is shared: eager PyTorch (2 OpenMP threads on 2 cores) "
                f"slows down far more than onnxruntime when other processes run, so the best calls are the closer "
                f"estimate of an idle machine. 1-minute load average {load_before[0]:.2f} before, "
                f"{load_after[0]:.2f} after. Machine: {machine_description()}; "
                f"commit {git_revision()}.\n\n{table}\n\n"
                + "\n".join(notes)
                + ("\n\nlw_refinenet50 512²: " + "; ".join(verdicts) + "." if verdicts else "")
                + "\n"
            ),
        )
        print("wrote BENCHMARKS.md")


def in_child(kind: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="512×512 only, no compile, fewer runs")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the GPU benchmark (batch 1 and 8, fp32/bf16/fp16) instead of the CPU one",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="only onnxruntime int8 against onnxruntime fp32 and eager fp32 (own section)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda":
        cuda_main(args)
        return
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        runs = {"inference": run_inference, "training": run_training, "int8": run_int8}
        print(json.dumps(runs[kind](spec)))
        return
    if args.int8:
        int8_main(args)
        return

    peak = conv_peak_gflops(args.repeat)
    print(f"machine peak (3×3 conv, fp32): {peak:.1f} GFLOP/s", flush=True)
    cases = [("lw_refinenet50", 512, 512), ("lw_refinenet_mbv2", 512, 512), ("refinenet101", 512, 512)]
    if not args.quick:
        cases += [("lw_refinenet50", 1024, 2048), ("lw_refinenet_mbv2", 1024, 2048)]
    paths = [p for p in PATHS if not (args.quick and "compile" in p)]
    lines = [
        "| model | input | path | ms/image | speed-up | GFLOP/s | % of conv peak | peak RSS (MiB) | first call (ms) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, h, w in cases:
        eager_ms = None
        for path in paths:
            spec = {
                "model": name,
                "height": h,
                "width": w,
                "path": path,
                "repeat": max(2, args.repeat if h == 512 else 2),
            }
            r = in_child("inference", spec)
            if "error" in r:
                lines.append(f"| {name} | {h}×{w} | {path} | failed: {r['error'][:80]} | | | | | |")
                print(f"{name} {h}x{w} {path}: FAILED {r['error']}", flush=True)
                continue
            eager_ms = r["ms"] if path == "eager fp32" else eager_ms
            speedup = eager_ms / r["ms"] if eager_ms else float("nan")
            lines.append(
                f"| {name} | {h}×{w} | {path} | {r['ms']:,.0f} | {speedup:.2f}× | {r['gflops']:,.1f} | "
                f"{100 * r['gflops'] / peak:.0f}% | {r['peak_mib']:,.0f} | {r['first_ms']:,.0f} |"
            )
            print(lines[-1], flush=True)
    inference_table = "\n".join(lines)

    train_lines = [
        "| model | crop × batch | grad checkpointing | images/s | s/step | peak RSS (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for checkpointing in (False, True):
        spec = {
            "model": "lw_refinenet50",
            "crop": 512,
            "batch": 2,
            "checkpointing": checkpointing,
            "repeat": 2 if args.quick else 3,
        }
        r = in_child("training", spec)
        if "error" in r:
            train_lines.append(
                f"| lw_refinenet50 | 512 × 2 | {'on' if checkpointing else 'off'} | failed: {r['error'][:80]} | | |"
            )
            continue
        train_lines.append(
            f"| lw_refinenet50 | 512 × 2 | {'on' if checkpointing else 'off'} | {r['img_per_s']:.2f} | "
            f"{r['s_per_step']:.2f} | {r['peak_mib']:,.0f} |"
        )
        print(train_lines[-1], flush=True)
    training_table = "\n".join(train_lines)
    print(inference_table)
    print(training_table)
    if not args.no_write:
        write_section(
            "inference",
            (
                "## Inference fast paths and training memory\n\n"
                f"`python benchmarks/inference.py` — batch 1, random weights, 21 classes; median of the timed runs "
                f"after a warm-up (the first call, which includes compilation, is listed separately). Speed-up is "
                f"against eager fp32 in the same run; GFLOP/s counts 2 FLOPs per MAC of the model. Machine peak, "
                f"measured in the same run as a 256→256 3×3 convolution (4×128×128, channels-last fp32): "
                f"**{peak:.0f} GFLOP/s**. Machine: {machine_description()}; commit {git_revision()}.\n\n"
                f"{inference_table}\n\n"
                "Training step (SGD, cross-entropy), with and without activation checkpointing:\n\n"
                f"{training_table}\n"
            ),
        )
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
