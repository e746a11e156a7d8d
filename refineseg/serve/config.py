"""Options of ``refineseg serve`` (one CLI flag / YAML key per field) and the optional-extra check."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from refineseg.errors import MissingDependencyError
from refineseg.inference.options import InferenceOptions
from refineseg.utils.config import option, required

# The serve extra's import names; python-multipart is ``python_multipart`` since 0.0.13, ``multipart`` before.
SERVE_MODULES = (("fastapi",), ("uvicorn",), ("prometheus_client",), ("python_multipart", "multipart"))


def require_serve_dependencies() -> None:
    """Import the ``serve`` extra's packages, or raise MissingDependencyError naming the pip command."""
    for names in SERVE_MODULES:
        for i, name in enumerate(names):
            try:
                importlib.import_module(name)
                break
            except ImportError as e:
                if i == len(names) - 1:
                    raise MissingDependencyError(
                        "refineseg serve needs fastapi, uvicorn, prometheus-client and python-multipart "
                        f"({e.name or name} is not installed): pip install 'refineseg[serve]'"
                    ) from None


@dataclass(kw_only=True)
class ServeConfig(InferenceOptions):
    """Everything ``refineseg serve`` needs. The inference options are ``refineseg predict``'s, so a
    served label map equals the one ``predict`` writes with the same options."""

    checkpoint: str = required(
        "checkpoint directory written by save_pretrained (e.g. runs/train/best), "
        "or an .onnx file with --backend onnxruntime"
    )
    backend: str = option(
        "torch", "inference engine; onnxruntime runs a file from `refineseg export`", choices=["torch", "onnxruntime"]
    )
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port to listen on")
    max_batch: int = option(8, "largest batch of same-size images run in one forward pass (1: no batching)")
    max_wait_ms: float = option(10.0, "how long the first request of a batch waits for others to join it")
    max_queue: int = option(64, "requests waiting for the model before new ones get 503 + Retry-After")
    max_upload_mb: float = option(20.0, "largest accepted upload in MiB (larger: 413)")
    timeout_s: float = option(120.0, "a request waiting longer than this for its result gets 504")
    alpha: float = option(0.5, "opacity of the label colours in ?format=overlay, 0..1")
    graceful_timeout_s: float = option(30.0, "on SIGTERM, how long in-flight requests may take to finish")
    log_level: str = option("info", "uvicorn's log level", choices=["critical", "error", "warning", "info", "debug"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "max_upload_mb", "timeout_s", "graceful_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def public_options(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports: inference and batching options (no host, port or paths)."""
        return {
            **self.inference_kwargs(),
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "optimize": self.optimize,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_queue": self.max_queue,
            "max_upload_mb": self.max_upload_mb,
            "alpha": self.alpha,
        }
