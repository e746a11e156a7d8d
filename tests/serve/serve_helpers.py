"""Helpers of the ``refineseg serve`` tests: photos, encoded uploads, an app over a checkpoint."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from refineseg.serve import ServeConfig
from refineseg.serve.app import create_app
from refineseg.serve.service import SegmentService

with warnings.catch_warnings():  # Starlette >= 1.0 suggests httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: F401 - re-exported for the tests


def photo(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth random colour blobs (an untrained model then predicts several classes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def encode(image: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def make_service(checkpoint: Path, **options) -> SegmentService:
    """A service over ``checkpoint`` with `refineseg serve`'s defaults unless ``options`` say otherwise."""
    return SegmentService.from_config(ServeConfig(checkpoint=str(checkpoint), **options))


def make_client(checkpoint: Path, **options) -> TestClient:
    """A TestClient of an app over ``checkpoint``; use it as a context manager (starts the batcher)."""
    return TestClient(create_app(make_service(checkpoint, **options)))
