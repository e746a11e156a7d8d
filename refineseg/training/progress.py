"""Training progress: the metrics log (``metrics.jsonl`` + TensorBoard) and the per-step bar."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from refineseg.training.config import TrainConfig
from refineseg.utils import distributed as dist_utils
from refineseg.utils.files import write_text

log = logging.getLogger("refineseg.train")


class MetricsLog:
    """``metrics.jsonl`` (one JSON record per line) plus TensorBoard scalars, on rank 0 only."""

    def __init__(self, out: Path, resume_step: int | None, enabled: bool) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():  # drop what a killed run logged after the checkpoint
            kept = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in kept if r["iter"] <= resume_step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed; skipping TensorBoard logs")

    def add(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["iter"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepLog:
    """Per-step progress: the tqdm bar, and every ``log_interval`` steps a loss/LR/speed record.

    A record's loss is the mean over the steps since the previous record. The bar shows on rank 0
    when stderr is a terminal (tqdm's ``disable=None``); without one, rank 0 prints each record
    as a plain line instead.
    """

    def __init__(
        self, config: TrainConfig, metrics: MetricsLog, step: int, window: dict[str, Any] | None = None
    ) -> None:
        self.config, self.metrics = config, metrics
        self.main = dist_utils.is_main_process()
        self.bar = tqdm(
            total=config.iters, initial=step, disable=None if self.main else True, desc="train", dynamic_ncols=True
        )
        self._new_window()
        if window:  # resuming mid-window: the next record still averages over the whole window
            self.loss_sum, self.steps = float(window["loss_sum"]), int(window["steps"])
            self.start -= float(window["seconds"])

    def _new_window(self) -> None:
        self.loss_sum, self.steps, self.start = 0.0, 0, time.perf_counter()

    def window(self) -> dict[str, Any]:
        """The steps since the last record, for a checkpoint: ``{"loss_sum", "steps", "seconds"}``."""
        return {"loss_sum": self.loss_sum, "steps": self.steps, "seconds": time.perf_counter() - self.start}

    def add(self, step: int, loss: float, lr: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % self.config.log_interval == 0 or step == self.config.iters:
            elapsed = time.perf_counter() - self.start
            record = {
                "iter": step,
                "loss": self.loss_sum / self.steps,
                "lr": lr,
                "it/s": self.steps / max(elapsed, 1e-9),
            }
            self.metrics.add(record)
            if self.main and self.bar.disable:  # no terminal: a plain log line instead of the bar
                print(
                    f"step {step}/{self.config.iters}  loss {record['loss']:.4f}  lr {lr:.2e}  "
                    f"{record['it/s']:.2f} it/s",
                    flush=True,
                )
            self._new_window()

    def close(self) -> None:
        self.bar.close()
