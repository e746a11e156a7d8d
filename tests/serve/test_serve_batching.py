"""Dynamic batching: same-size grouping, results equal to one-at-a-time, a full queue, timeouts.

Concurrent requests go through httpx's ASGI transport on one event loop, as uvicorn would run them.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import make_model
from PIL import Image
from serve_helpers import encode, make_service, photo, post_all, post_concurrently

from refineseg.inference import InferenceOptions, segment
from refineseg.serve.app import create_app
from refineseg.serve.batching import DynamicBatcher, QueueFull, ShuttingDown, segment_batch

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(48, 64), (48, 64), (40, 56), (48, 64), (40, 56), (48, 64), (33, 47), (48, 64)]


def test_segment_batch_equals_segment():
    model = InferenceOptions().prepare(make_model())
    images = [photo(seed, 48, 64) for seed in range(4)]
    assert all(np.array_equal(a, segment(model, im)) for a, im in zip(segment_batch(model, images), images))
    with pytest.raises(ValueError, match="one size"):
        segment_batch(model, [photo(0, 48, 64), photo(1, 40, 64)])


def test_batcher_groups_same_size_in_arrival_order():
    """Jobs queued before the worker starts: batches of one size each, oldest first, at most max_batch."""
    seen: list[list[tuple[int, ...]]] = []

    def run(images):
        seen.append([im.shape[:2] for im in images])
        return [np.full(im.shape[:2], im.shape[0], np.uint8) for im in images]

    batcher = DynamicBatcher(run, max_batch=3, max_wait_s=0.0, max_queue=len(SIZES))
    futures = [batcher.submit(np.zeros((*s, 3), np.uint8)) for s in SIZES]
    with pytest.raises(QueueFull):
        batcher.submit(np.zeros((8, 8, 3), np.uint8))
    batcher.start()
    results = [f.result(timeout=10) for f in futures]
    batcher.stop(timeout=10)
    assert seen == [[(48, 64)] * 3, [(40, 56)] * 2, [(48, 64)] * 2, [(33, 47)]]
    assert [r.shape for r in results] == SIZES and all(r[0, 0] == s[0] for r, s in zip(results, SIZES))
    assert not batcher.alive
    with pytest.raises(ShuttingDown):
        batcher.submit(np.zeros((8, 8, 3), np.uint8))


def test_failed_batch_is_retried_one_by_one():
    def run(images):
        if len(images) > 1 or images[0][0, 0, 0] == 1:
            raise RuntimeError("bad")
        return [np.zeros(images[0].shape[:2], np.uint8)]

    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.0)
    futures = [batcher.submit(np.full((4, 4, 3), v, np.uint8)) for v in (0, 1, 0)]
    batcher.start()
    assert futures[0].result(timeout=10).shape == (4, 4) and futures[2].result(timeout=10).shape == (4, 4)
    with pytest.raises(RuntimeError, match="bad"):
        futures[1].result(timeout=10)
    batcher.stop(timeout=10)


def test_concurrent_requests_equal_one_at_a_time(checkpoint):
    """16 concurrent uploads of mixed sizes: batches form (only same-size) and every answer equals
    the unbatched server's answer for the same image."""
    sizes = [SIZES[i % len(SIZES)] for i in range(16)]
    bodies = [encode(photo(seed, h, w)) for seed, (h, w) in enumerate(sizes)]

    def answers(**options):
        responses, batches = post_concurrently(make_service(checkpoint, **options), bodies)
        assert all(r.status_code == 200 for r in responses)
        return [r.content for r in responses], batches

    batched, batches = answers(max_batch=8, max_wait_ms=300)
    single, singles = answers(max_batch=1)
    assert batched == single
    assert max(len(b) for b in batches) > 1 and all(len(set(b)) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 16 and all(len(b) == 1 for b in singles)
    for answer, (h, w) in zip(batched, sizes):
        assert np.asarray(Image.open(io.BytesIO(answer))).shape == (h, w)


def _blocked_service(checkpoint, **options):
    """A service whose model sets ``busy`` and waits for ``release`` (Events) before each batch:
    (service, release, busy)."""
    service = make_service(checkpoint, **options)
    release, busy = threading.Event(), threading.Event()
    run = service._run_batch

    def blocked(images):
        busy.set()
        release.wait(30)
        return run(images)

    service.batcher.run_batch = blocked
    return service, release, busy


async def _until(condition, seconds: float = 10.0) -> None:
    """Yield to the event loop until ``condition()`` holds (at most ``seconds``)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


def test_full_queue_gets_503_with_retry_after(checkpoint):
    service, release, busy = _blocked_service(checkpoint, max_queue=2, max_batch=1, max_wait_ms=0)
    app = create_app(service)
    body = encode(photo(0))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            send = lambda: client.post("/v1/segment", content=body, headers={"content-type": "image/png"})  # noqa: E731
            waiting = [asyncio.create_task(send())]  # taken by the batcher, which then blocks
            await _until(busy.is_set)
            waiting += [asyncio.create_task(send()) for _ in range(2)]  # queued behind it
            await _until(lambda: service.batcher.queued == 2)
            queued = service.batcher.queued
            refused = await send()
            release.set()
            return queued, refused, await asyncio.gather(*waiting)

    service.start()
    try:
        queued, refused, served = asyncio.run(scenario())
    finally:
        release.set()
        service.stop()
    assert busy.is_set() and queued == 2
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue" in refused.json()["error"]
    assert [r.status_code for r in served] == [200, 200, 200]


def test_timeout_gets_504(checkpoint):
    service, release, _ = _blocked_service(checkpoint, timeout_s=0.2)
    app = create_app(service)
    service.start()
    try:
        start = time.monotonic()
        (response,) = asyncio.run(post_all(app, [encode(photo(0))]))
        assert response.status_code == 504 and "timeout" in response.json()["error"]
        assert time.monotonic() - start < 10
    finally:
        release.set()
        service.stop()
