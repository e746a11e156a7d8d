"""Prometheus metrics of the server (``GET /metrics``), in a registry of their own per app."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """Requests by endpoint and status, errors by reason, latency, batch sizes and queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "refineseg_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "refineseg_errors",
            "failed requests by reason (bad_image, too_large, queue_full, timeout, internal, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "refineseg_request_latency_seconds",
            "time from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "refineseg_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("refineseg_queue_depth", "images waiting for a batch", registry=self.registry)
        self.in_flight = Gauge("refineseg_in_flight_requests", "requests being handled", registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
