"""Inference and training speed/memory of the fast paths, written to BENCHMARKS.md.

For lw_refinenet50, lw_refinenet_mbv2 and refinenet101 at 512×512 (and 1024×2048 for the LW
models), batch 1: ms/image of plain eager fp32, each fast path of ``optimize_for_inference``
and onnxruntime; peak RSS; achieved GFLOP/s against the machine's peak, measured in the same
run as a large 3×3 convolution. Then training-step throughput and peak RSS with and without
``--grad-checkpointing``. Every configuration runs in its own process so peak RSS is its own.

``--device cuda`` measures the GPU instead (its own BENCHMARKS.md section): batch 1 and 8, eager
fp32 and ``optimize_for_inference`` in fp32, bf16 and fp16; images/s and peak GPU memory.

    python benchmarks/inference.py [--quick] [--repeat 5] [--no-write] [--device cuda]
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

PATHS = ["eager fp32", "folded+CL fp32", "folded+CL+compile fp32", "folded+CL bf16", "onnxruntime fp32"]
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
    from refineseg.optimize import optimize_for_inference
    from refineseg.profiling import count_macs

    torch.manual_seed(0)
    model = refineseg.create_model(spec["model"], num_classes=21).eval()
    h, w = spec["height"], spec["width"]
    x = torch.randn(1, 3, h, w)
    path = spec["path"]
    if path == "eager fp32":
        runner = model
    elif path == "onnxruntime fp32":
        from refineseg.export import OnnxSegmenter, export_onnx

        onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
        export_onnx(model, onnx_path, height=h, width=w)
        runner = OnnxSegmenter(onnx_path)
    else:
        runner = optimize_for_inference(model, fold_bn=True, channels_last=True, compile="compile" in path,
                                        dtype=torch.bfloat16 if "bf16" in path else None)
    with torch.inference_mode():
        start = time.perf_counter()
        runner(x)  # warm-up (and compilation)
        first = time.perf_counter() - start
        seconds = median_seconds(lambda: runner(x), warmup=1, repeat=spec["repeat"])
    macs = count_macs(model, h, w)
    return {"ms": seconds * 1000, "first_ms": first * 1000, "gflops": 2 * macs / seconds / 1e9, "peak_mib": _peak_mib()}


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
    from refineseg.optimize import optimize_for_inference

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
    lines = ["| model | input | batch | path | ms/batch | images/s | speed-up | peak GPU memory (MiB) |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
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
        write_section("inference-gpu", (
            "## GPU inference\n\n"
            f"`python benchmarks/inference.py --device cuda{' --quick' if args.quick else ''}` on **{gpu}** "
            f"({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}) — random weights, 21 classes, "
            f"cuDNN autotuning on; median of {repeat} synchronized calls after 3 warm-up calls. Speed-up is "
            f"against eager fp32 at the same batch; peak GPU memory is `torch.cuda.max_memory_allocated` "
            f"(weights + activations). bf16/fp16 run under autocast with float32 logits. "
            f"Machine: {machine_description()}; commit {git_revision()}.\n\n{table}\n"))
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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: the GPU benchmark (batch 1 and 8, fp32/bf16/fp16) instead of the CPU one")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda":
        cuda_main(args)
        return
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        print(json.dumps(run_inference(spec) if kind == "inference" else run_training(spec)))
        return

    peak = conv_peak_gflops(args.repeat)
    print(f"machine peak (3×3 conv, fp32): {peak:.1f} GFLOP/s", flush=True)
    cases = [("lw_refinenet50", 512, 512), ("lw_refinenet_mbv2", 512, 512), ("refinenet101", 512, 512)]
    if not args.quick:
        cases += [("lw_refinenet50", 1024, 2048), ("lw_refinenet_mbv2", 1024, 2048)]
    paths = [p for p in PATHS if not (args.quick and "compile" in p)]
    lines = ["| model | input | path | ms/image | speed-up | GFLOP/s | % of conv peak | peak RSS (MiB) | first call (ms) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, h, w in cases:
        eager_ms = None
        for path in paths:
            spec = {"model": name, "height": h, "width": w, "path": path, "repeat": max(2, args.repeat if h == 512 else 2)}
            r = in_child("inference", spec)
            if "error" in r:
                lines.append(f"| {name} | {h}×{w} | {path} | failed: {r['error'][:80]} | | | | | |")
                print(f"{name} {h}x{w} {path}: FAILED {r['error']}", flush=True)
                continue
            eager_ms = r["ms"] if path == "eager fp32" else eager_ms
            speedup = eager_ms / r["ms"] if eager_ms else float("nan")
            lines.append(f"| {name} | {h}×{w} | {path} | {r['ms']:,.0f} | {speedup:.2f}× | {r['gflops']:,.1f} | "
                         f"{100 * r['gflops'] / peak:.0f}% | {r['peak_mib']:,.0f} | {r['first_ms']:,.0f} |")
            print(lines[-1], flush=True)
    inference_table = "\n".join(lines)

    train_lines = ["| model | crop × batch | grad checkpointing | images/s | s/step | peak RSS (MiB) |",
                   "| --- | --- | --- | ---: | ---: | ---: |"]
    for checkpointing in (False, True):
        spec = {"model": "lw_refinenet50", "crop": 512, "batch": 2, "checkpointing": checkpointing,
                "repeat": 2 if args.quick else 3}
        r = in_child("training", spec)
        if "error" in r:
            train_lines.append(f"| lw_refinenet50 | 512 × 2 | {'on' if checkpointing else 'off'} | failed: {r['error'][:80]} | | |")
            continue
        train_lines.append(f"| lw_refinenet50 | 512 × 2 | {'on' if checkpointing else 'off'} | {r['img_per_s']:.2f} | "
                           f"{r['s_per_step']:.2f} | {r['peak_mib']:,.0f} |")
        print(train_lines[-1], flush=True)
    training_table = "\n".join(train_lines)
    print(inference_table)
    print(training_table)
    if not args.no_write:
        write_section("inference", (
            "## Inference fast paths and training memory\n\n"
            f"`python benchmarks/inference.py` — batch 1, random weights, 21 classes; median of the timed runs "
            f"after a warm-up (the first call, which includes compilation, is listed separately). Speed-up is "
            f"against eager fp32 in the same run; GFLOP/s counts 2 FLOPs per MAC of the model. Machine peak, "
            f"measured in the same run as a 256→256 3×3 convolution (4×128×128, channels-last fp32): "
            f"**{peak:.0f} GFLOP/s**. Machine: {machine_description()}; commit {git_revision()}.\n\n"
            f"{inference_table}\n\nTraining step (SGD, cross-entropy), with and without activation checkpointing:\n\n"
            f"{training_table}\n"))
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
