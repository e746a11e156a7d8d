"""Helpers of the ``refineseg serve`` tests: photos, encoded uploads, an app over a checkpoint, concurrent
uploads."""

from __future__ import annotations

import asyncio
import io
import warnings
from pathlib import Path

import httpx
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


async def post_all(app, bodies: list[bytes]) -> list[httpx.Response]:
    """POST every body (a PNG) to ``/v1/segment`` at once, through httpx's ASGI transport on one event loop,
    as uvicorn would run them."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await asyncio.gather(
            *(client.post("/v1/segment", content=b, headers={"content-type": "image/png"}) for b in bodies)
        )


def post_concurrently(
    service: SegmentService, bodies: list[bytes]
) -> tuple[list[httpx.Response], list[list[tuple[int, ...]]]]:
    """Start ``service``, :func:`post_all` the bodies to its app, stop it: the responses, and the image
    shapes of each batch its batcher ran."""
    batches: list[list[tuple[int, ...]]] = []
    run = service._run_batch
    service.batcher.run_batch = lambda images: batches.append([im.shape for im in images]) or run(images)
    app = create_app(service)
    service.start()
    try:
        responses = asyncio.run(post_all(app, bodies))
    finally:
        service.stop()
    return responses, batches
