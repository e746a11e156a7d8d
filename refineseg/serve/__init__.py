"""An HTTP server for a saved model: ``refineseg serve --checkpoint DIR`` (FastAPI + uvicorn).

``POST /v1/segment`` answers the label PNG ``refineseg predict`` would write (or an overlay, or a
JSON summary), with dynamic batching of concurrent requests; ``GET /healthz``, ``GET /v1/model``,
``GET /metrics`` (Prometheus) and a self-contained page at ``/``. Needs the ``serve`` extra
(``pip install 'refineseg[serve]'``); importing this package loads none of it.
"""

from refineseg.serve.config import ServeConfig, require_serve_dependencies
from refineseg.serve.server import run_serve

__all__ = ["ServeConfig", "run_serve", "require_serve_dependencies"]
