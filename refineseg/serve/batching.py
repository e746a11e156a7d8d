"""Dynamic batching: requests that arrive close together run through the model in one forward pass.

:class:`DynamicBatcher` owns one worker thread, the only one that touches the model. The first
waiting image opens a batch; images of the same size that arrive within ``max_wait_s`` join it, up
to ``max_batch``; images of other sizes wait, in arrival order, for a later batch (a batch holds
one size only, so nothing is padded or resized and each result equals a one-image run). A batch
that fails is retried image by image, so one bad image fails only its own request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from refineseg.inference import predict_probabilities, preprocess, segment
from refineseg.utils.device import model_device

log = logging.getLogger("refineseg.serve")

BatchFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class QueueFull(Exception):
    """More requests are waiting than the queue holds; the caller should retry later (HTTP 503)."""


class ShuttingDown(RuntimeError):
    """The batcher was stopped and takes no more images (HTTP 503)."""


def segment_batch(model: nn.Module, images: Sequence[np.ndarray], **options) -> list[np.ndarray]:
    """Label maps of same-size (H, W, 3) uint8 images, computed as :func:`segment` computes one.

    One image goes through :func:`~refineseg.inference.predictor.segment` itself (what
    ``refineseg predict`` runs); several are preprocessed the same way, stacked and passed through
    :func:`~refineseg.inference.predictor.predict_probabilities` in one call.
    """
    if len(images) == 1:
        return [segment(model, images[0], **options)]
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"a batch needs images of one size, got {sorted({im.shape for im in images})}")
    config = model.config
    x = torch.cat([preprocess(im, config.mean, config.std) for im in images]).to(model_device(model))
    labels = predict_probabilities(model, x, **options).argmax(1).to(torch.uint8).cpu().numpy()
    return list(labels)


@dataclass(eq=False)  # identity, not array comparison, in deque.remove
class _Job:
    image: np.ndarray
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Groups submitted images into same-size batches for ``run_batch`` on one worker thread.

    ``submit`` returns a :class:`concurrent.futures.Future` of the image's label map; it raises
    :class:`QueueFull` when ``max_queue`` images are already waiting. ``on_batch(n)`` is called
    with the size of every batch run (for metrics).
    """

    def __init__(
        self,
        run_batch: BatchFn,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max(1, max_batch), max(0.0, max_wait_s)
        self.max_queue, self.on_batch = max_queue, on_batch
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Images waiting for a batch (not counting the batch being run)."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="refineseg-batcher", daemon=True)
            self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """Queue one image; its future holds the (H, W) uint8 labels or the error."""
        job = _Job(image)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (--max-queue {self.max_queue})")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new images, finish the queued ones, and join the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take_same_size(self, batch: list[_Job]) -> None:
        """Move waiting jobs of the batch's image size into ``batch`` (up to ``max_batch``)."""
        shape = batch[0].image.shape
        for job in [j for j in self._pending if j.image.shape == shape]:
            if len(batch) >= self.max_batch:
                return
            self._pending.remove(job)
            batch.append(job)

    def _next_batch(self) -> list[_Job] | None:
        """The next batch: the oldest job plus same-size ones arriving within ``max_wait_s``; None to stop."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            batch = [self._pending.popleft()]
            deadline = time.monotonic() + self.max_wait_s
            while True:
                self._take_same_size(batch)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    return batch
                self._cond.wait(remaining)

    def _run(self, jobs: list[_Job]) -> None:
        """Run one batch and resolve its futures; on failure retry the images one at a time."""
        try:
            results = self.run_batch([j.image for j in jobs])
        except Exception as e:  # noqa: BLE001 - delivered to the waiting request(s)
            if len(jobs) > 1:
                log.warning(
                    "batch of %d failed (%s: %s); running its images one by one",
                    len(jobs),
                    type(e).__name__,
                    " ".join(str(e).split()),
                )
                for job in jobs:
                    self._run([job])
            else:
                jobs[0].future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        for job, labels in zip(jobs, results):
            job.future.set_result(labels)

    def _loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                jobs = [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop timed-out requests
                if jobs:
                    self._run(jobs)
        except BaseException as e:  # a bug here must not leave requests waiting forever
            log.error("batcher stopped: %s: %s", type(e).__name__, " ".join(str(e).split()))
            with self._cond:
                self._stopping = True
                jobs, self._pending = list(self._pending), deque()
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ShuttingDown(f"batcher stopped ({type(e).__name__})"))
            raise
