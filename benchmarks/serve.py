"""Throughput and latency of ``refineseg serve``, batching on vs off, and its memory over many requests.

Starts ``refineseg serve`` as a subprocess on a free loopback port for a random-weight model (21
classes, default lw_refinenet_mbv2), once with dynamic batching (``--max-batch 8``) and once
without (``--max-batch 1``). For 1, 4 and 16 concurrent clients (asyncio + httpx, each sending its
next request when the previous one is answered) it measures requests/s and p50/p95/p99 latency
over ``--requests`` requests of one ``--size``² PNG. Then ``--memory-requests`` requests (batching
on, 4 clients) while sampling the server's resident memory: it must stay flat (growth after the
first tenth below ``--max-growth-mib``). Writes the ``serve`` section of BENCHMARKS.md.

    python benchmarks/serve.py [--quick] [--size 256] [--requests 64] [--memory-requests 1000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision, machine_description, write_section  # noqa: E402

CLIENTS = (1, 4, 16)
MODES = {"on": ["--max-batch", "8", "--max-wait-ms", "5"], "off": ["--max-batch", "1", "--max-wait-ms", "0"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photo_png(size: int, seed: int = 0) -> bytes:
    """A smooth random colour image as PNG bytes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, size // 16), max(2, size // 16), 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


def save_checkpoint(model: str, directory: Path) -> Path:
    import torch

    import refineseg

    torch.manual_seed(0)
    path = directory / model
    refineseg.create_model(model, num_classes=21).eval().save_pretrained(path)
    return path


class Server:
    """``refineseg serve`` in a subprocess; a context manager that waits for /healthz and stops it with SIGTERM."""

    def __init__(self, checkpoint: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "refineseg",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--max-queue",
            "256",
            *extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.returncode = self.process.wait(60)


async def load(base: str, body: bytes, clients: int, requests: int, on_done=None) -> tuple[float, list[float]]:
    """``requests`` POSTs from ``clients`` concurrent clients; (elapsed seconds, latencies in seconds)."""
    latencies: list[float] = []
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker() -> None:
            for _ in todo:
                start = time.perf_counter()
                response = await client.post("/v1/segment", content=body, headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
                if on_done is not None:
                    on_done(len(latencies))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_modes(checkpoint: Path, body: bytes, requests: int) -> tuple[list[dict], dict]:
    """One row per (batching, clients); and the options the server reported (``GET /v1/model``)."""
    rows, options = [], {}
    for mode, extra in MODES.items():
        with Server(checkpoint, extra) as server:
            options = httpx.get(server.base + "/v1/model", timeout=10).json()["options"]
            asyncio.run(load(server.base, body, 4, 8))  # warm-up
            for clients in CLIENTS:
                elapsed, lat = asyncio.run(load(server.base, body, clients, requests))
                row = {
                    "batching": mode,
                    "clients": clients,
                    "rps": len(lat) / elapsed,
                    **{f"p{q}": percentile(lat, q) * 1000 for q in (50, 95, 99)},
                }
                rows.append(row)
                print(
                    f"batching {mode:3} clients {clients:2}: {row['rps']:6.1f} req/s  p50 {row['p50']:7.1f} ms  "
                    f"p95 {row['p95']:7.1f} ms  p99 {row['p99']:7.1f} ms",
                    flush=True,
                )
    return rows, options


def measure_memory(checkpoint: Path, body: bytes, requests: int) -> dict:
    """RSS samples of the server every tenth of ``requests`` (batching on, 4 clients)."""
    with Server(checkpoint, MODES["on"]) as server:
        samples: list[tuple[int, float]] = [(0, rss_mib(server.process.pid))]
        step = max(1, requests // 10)

        def sample(done: int) -> None:
            if done % step == 0:
                samples.append((done, rss_mib(server.process.pid)))

        elapsed, _ = asyncio.run(load(server.base, body, 4, requests, on_done=sample))
    after_first = next(m for n, m in samples if n >= step)
    return {"samples": samples, "growth": samples[-1][1] - after_first, "elapsed": elapsed, "exit": server.returncode}


def section(args, rows: list[dict], options: dict, memory: dict, loadavg: str) -> str:
    table = ["| batching | clients | requests/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
    table += [
        f"| {r['batching']} | {r['clients']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} |"
        for r in rows
    ]
    curve = ", ".join(f"{n}: {m:.0f}" for n, m in memory["samples"])
    flat = "flat" if memory["growth"] <= args.max_growth_mib else "**GROWING**"
    return (
        "## HTTP serving: dynamic batching (issue 19)\n\n"
        f"`python benchmarks/serve.py --size {args.size} --requests {args.requests} "
        f"--memory-requests {args.memory_requests}` — `refineseg serve` in its own process on a loopback port, "
        f"{args.model} (random weights, 21 classes), one {args.size}×{args.size} PNG posted as the raw body "
        f"(answer: the label PNG); each client sends its next request when the previous one is answered. "
        f"Batching on: `--max-batch 8 --max-wait-ms 5`; off: `--max-batch 1`. {args.requests} requests per row; "
        f"server defaults otherwise (precision {options.get('precision', '?')}, mode {options.get('mode', '?')}).\n"
        f"Machine: {machine_description()}; revision {git_revision()}. **Shared CPU**: the clients, the server "
        f"and other jobs (a training run) ran on the same 2 cores (load average before: {loadavg}), so the "
        "figures are indicative only: batching helps most where a batch uses cores (or a GPU) that single "
        "images leave idle, which 2 busy cores barely have.\n\n" + "\n".join(table) + "\n\n"
        f"Memory over {args.memory_requests:,} requests (batching on, 4 clients, {memory['elapsed']:.0f} s): "
        f"server RSS in MiB after N requests — {curve}; growth after the first tenth "
        f"{memory['growth']:+.1f} MiB ({flat}, limit {args.max_growth_mib:g} MiB). "
        f"Exit status after SIGTERM: {memory['exit']}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lw_refinenet_mbv2")
    parser.add_argument("--size", type=int, default=256, help="side of the posted square image")
    parser.add_argument("--requests", type=int, default=64, help="requests per (batching, clients) row")
    parser.add_argument("--memory-requests", type=int, default=1000)
    parser.add_argument("--max-growth-mib", type=float, default=20.0, help="allowed RSS growth for 'flat'")
    parser.add_argument("--quick", action="store_true", help="--size 128 --requests 32 (the memory run stays)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.quick:
        args.size, args.requests = 128, 32

    loadavg = " ".join(f"{v:.1f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="refineseg-serve-bench-") as tmp:
        checkpoint = save_checkpoint(args.model, Path(tmp))
        body = photo_png(args.size)
        rows, options = measure_modes(checkpoint, body, args.requests)
        memory = measure_memory(checkpoint, photo_png(64, seed=1), args.memory_requests)
    print(f"memory (MiB after N requests): {memory['samples']}; growth {memory['growth']:+.1f} MiB")
    text = section(args, rows, options, memory, loadavg)
    if not args.no_write:
        write_section("serve", text)
    print(text)
    if memory["growth"] > args.max_growth_mib:
        raise SystemExit(f"server memory grew by {memory['growth']:.1f} MiB over {args.memory_requests} requests")


if __name__ == "__main__":
    main()
