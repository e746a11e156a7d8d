"""The FastAPI application of ``refineseg serve``: routes, upload limits, one-line errors, metrics.

Every failure answers ``{"error": "<one line>"}`` with its status (400 bad upload or query, 413
upload too large, 503 queue full with ``Retry-After``, 504 timed out, 500 a bug) and is logged on
one line; none stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from refineseg.errors import one_line
from refineseg.serve.metrics import ServeMetrics
from refineseg.serve.page import PAGE
from refineseg.serve.service import BadImage, QueueFull, SegmentService, ShuttingDown

log = logging.getLogger("refineseg.serve")

RETRY_AFTER_S = 1  # the Retry-After of a 503 (queue full)
ENDPOINTS = ("/", "/healthz", "/v1/model", "/v1/segment", "/metrics")


class ApiError(Exception):
    """A request that fails with ``status``; ``reason`` labels the error metric."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


def _error_response(request: Request, error: ApiError, metrics: ServeMetrics) -> JSONResponse:
    """The JSON answer of a failed request, logged on one line and counted."""
    message = " ".join(error.message.split())
    client = request.client.host if request.client else "-"
    log.warning("%s %s %s -> %d %s: %s", client, request.method, request.url.path, error.status, error.reason, message)
    metrics.errors.labels(reason=error.reason).inc()
    return JSONResponse({"error": message}, status_code=error.status, headers=error.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (announced or streamed)."""
    too_large = ApiError(413, f"upload larger than {limit / 2**20:g} MiB (--max-upload-mb)", "too_large")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"invalid Content-Length {length!r}", "bad_request")
        if int(length) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _multipart_image(request: Request, body: bytes) -> bytes:
    """The bytes of the form field ``image`` of a multipart body (already read and size-checked)."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body ({e.message})", "bad_request") from None
    try:
        field = form.get("image")
        if field is None:
            raise ApiError(400, "multipart body has no field 'image'", "bad_request")
        if not isinstance(field, UploadFile):
            raise ApiError(400, "multipart field 'image' must be a file (with a filename)", "bad_request")
        return await field.read()
    finally:
        await form.close()


async def read_upload(request: Request, limit: int) -> bytes:
    """The uploaded image: the raw body (``Content-Type: image/*``) or the multipart field ``image``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type in ("multipart/form-data", "application/octet-stream")):
        raise ApiError(
            400,
            f"expected an image body (Content-Type: image/*) or a multipart field 'image', "
            f"got Content-Type {content_type or 'none'!r}",
            "bad_request",
        )
    body = await _read_body(request, limit)
    if content_type == "multipart/form-data":
        body = await _multipart_image(request, body)
    if not body:
        raise ApiError(400, "empty upload", "bad_image")
    return body


async def _segment_response(
    service: SegmentService, data: bytes, fmt: str, alpha: float | None, labels: bool
) -> Response:
    """Decode, segment (batched) and encode one upload."""
    try:
        image = await run_in_threadpool(service.decode, data)
    except BadImage as e:
        raise ApiError(400, str(e), "bad_image") from None
    try:
        label_map = await service.segment(image, timeout=service.config.timeout_s or None)
    except QueueFull as e:
        raise ApiError(503, f"server busy: {e}", "queue_full", {"Retry-After": str(RETRY_AFTER_S)}) from None
    except (TimeoutError, asyncio.TimeoutError):
        raise ApiError(504, f"no result within {service.config.timeout_s:g} s (--timeout-s)", "timeout") from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), "shutting_down", {"Retry-After": str(RETRY_AFTER_S)}) from None
    if fmt == "json":
        return JSONResponse(await run_in_threadpool(service.summary, label_map, labels))
    if fmt == "overlay":
        return Response(await run_in_threadpool(service.overlay_png, image, label_map, alpha), media_type="image/png")
    return Response(await run_in_threadpool(service.label_png, label_map), media_type="image/png")


def _add_routes(app: FastAPI, service: SegmentService, metrics: ServeMetrics) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ok", "model": service.model.config.name, "queued": service.batcher.queued})

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return service.model_info()

    @app.post("/v1/segment")
    async def segment(
        request: Request,
        format: Literal["png", "overlay", "json"] = "png",
        alpha: float | None = None,
        labels: bool = False,
    ) -> Response:
        """The image as the raw body or the multipart field ``image``; ``?format=png|overlay|json``."""
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ApiError(400, f"alpha must be in [0, 1], got {alpha}", "bad_request")
        if service.batcher.queued >= service.config.max_queue:  # refuse before reading the body
            raise ApiError(503, "server busy: queue full", "queue_full", {"Retry-After": str(RETRY_AFTER_S)})
        data = await read_upload(request, service.config.max_upload_bytes)
        try:
            return await _segment_response(service, data, format, alpha, labels)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - out of memory, a backend failure ...: this request fails, not the server
            log.debug("segment failed", exc_info=True)  # the traceback with --log-level debug; the 500 is logged below
            raise ApiError(500, f"internal error ({type(e).__name__}: {one_line(e)})", "internal") from None

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.queue_depth.set(service.batcher.queued)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(request, error, metrics)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return _error_response(request, ApiError(400, f"bad request: {problems}", "bad_request"), metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(
            request, ApiError(error.status_code, str(error.detail), "http", dict(error.headers or {})), metrics
        )


def create_app(service: SegmentService, metrics: ServeMetrics | None = None) -> FastAPI:
    """The application serving ``service``; its lifespan starts and stops the batcher.

    ``metrics`` defaults to the service's own (:class:`ServeMetrics`, created when it has none).
    """
    metrics = metrics or service.metrics or ServeMetrics()
    if service.metrics is None:
        service.metrics = metrics
        service.batcher.on_batch = metrics.batch_size.observe

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="refineseg", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.metrics = service, metrics

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # noqa: ANN001, ANN202 - Starlette's signature
        start = time.perf_counter()
        metrics.in_flight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight.dec()
            endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
            metrics.observe_request(endpoint, status, time.perf_counter() - start)

    _add_routes(app, service, metrics)
    _add_error_handlers(app, metrics)
    return app
