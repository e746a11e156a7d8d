"""The model behind the HTTP layer: decode an upload, segment it (batched), encode the answer.

Decoding and encoding reuse the library's file readers and writers on a private temporary folder,
so an upload is read exactly as ``refineseg predict`` reads a file (same conversions, same
truncation checks) and the label PNG is byte for byte the file ``predict`` writes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from refineseg.data import read_image, write_label_png
from refineseg.errors import DataError, one_line
from refineseg.inference.predict import load_predictor
from refineseg.report.visualize import overlay
from refineseg.serve.batching import DynamicBatcher, QueueFull, ShuttingDown, segment_batch
from refineseg.serve.config import ServeConfig

log = logging.getLogger("refineseg.serve")

FORMATS = ("png", "overlay", "json")
UPLOAD_NAME = "upload"  # how an upload is named in error messages


class BadImage(ValueError):
    """The upload is not an image Pillow can decode in full (HTTP 400)."""


__all__ = ["BadImage", "QueueFull", "ShuttingDown", "SegmentService", "FORMATS"]


class SegmentService:
    """A loaded model, its dynamic batcher and the conversions between bytes and label maps."""

    def __init__(self, model: nn.Module, config: ServeConfig, metrics: Any = None) -> None:
        self.model, self.config, self.metrics = model, config, metrics
        self.options = config.inference_kwargs()
        on_batch = metrics.batch_size.observe if metrics is not None else None
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000,
            max_queue=config.max_queue,
            on_batch=on_batch,
        )

    @classmethod
    def from_config(cls, config: ServeConfig, metrics: Any = None) -> SegmentService:
        """Load ``config.checkpoint`` the way ``refineseg predict`` does (CheckpointError when it cannot)."""
        return cls(load_predictor(config), config, metrics)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.config.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.model.config.palette]

    @property
    def ready(self) -> bool:
        return self.batcher.alive

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def _run_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return segment_batch(self.model, images, **self.options)

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``: name, classes, palette, normalization and serving options."""
        config = self.model.config
        return {
            "name": config.name,
            "num_classes": config.num_classes,
            "classes": self.class_names,
            "palette": [list(c) for c in self.palette],
            "mean": list(config.mean),
            "std": list(config.std),
            "options": self.config.public_options(),
        }

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        """An upload as (H, W, 3) uint8 RGB, read by :func:`refineseg.data.read_image`; BadImage if it cannot be."""
        with tempfile.TemporaryDirectory(prefix="refineseg-serve-") as tmp:
            path = Path(tmp) / UPLOAD_NAME
            path.write_bytes(data)
            try:
                return read_image(path)
            except DataError as e:
                raise BadImage(one_line(e).replace(str(path), UPLOAD_NAME)) from None

    async def segment(self, image: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """The label map of ``image``, batched with concurrent requests; QueueFull or TimeoutError."""
        future = self.batcher.submit(image)
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.batcher.queued)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def label_png(self, labels: np.ndarray) -> bytes:
        """The palette PNG of class indices, written by :func:`refineseg.data.write_label_png` as ``predict`` does."""
        with tempfile.TemporaryDirectory(prefix="refineseg-serve-") as tmp:
            path = Path(tmp) / "labels.png"
            write_label_png(path, labels, self.palette)
            return path.read_bytes()

    def overlay_png(self, image: np.ndarray, labels: np.ndarray, alpha: float | None = None) -> bytes:
        """The photo with the label colours blended over it and a legend, as ``predict`` draws it."""
        shown = overlay(
            image, labels, self.palette, self.class_names, alpha=self.config.alpha if alpha is None else alpha
        )
        buffer = io.BytesIO()
        shown.save(buffer, format="PNG")
        return buffer.getvalue()

    def summary(self, labels: np.ndarray, with_labels: bool = False) -> dict[str, Any]:
        """``?format=json``: size, classes present with pixel counts and fractions (+ the label PNG, base64)."""
        counts = np.bincount(labels.ravel(), minlength=256)
        total = int(labels.size)
        names, palette = self.class_names, self.palette
        classes = [
            {
                "index": int(i),
                "name": names[i] if i < len(names) else str(int(i)),
                "color": list(palette[i]) if i < len(palette) else None,
                "pixels": int(counts[i]),
                "fraction": round(float(counts[i]) / total, 6),
            }
            for i in np.flatnonzero(counts)
        ]
        result: dict[str, Any] = {
            "width": int(labels.shape[1]),
            "height": int(labels.shape[0]),
            "model": self.model.config.name,
            "classes": classes,
        }
        if with_labels:
            result["labels_png"] = base64.b64encode(self.label_png(labels)).decode("ascii")
        return result
