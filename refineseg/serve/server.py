"""``refineseg serve``: load the model, listen, and stop gracefully on SIGTERM (exit status 0).

The model is loaded and the address bound before uvicorn starts, so a bad checkpoint or a port in
use ends with the usual one-line error (status 2). On SIGTERM (or Ctrl-C) uvicorn stops accepting
connections, lets the requests in flight finish (at most ``--graceful-timeout-s``), then the
batcher finishes its queue and the process exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from types import FrameType

from refineseg.errors import RefineSegError
from refineseg.serve.config import ServeConfig, require_serve_dependencies

log = logging.getLogger("refineseg.serve")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); RefineSegError when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        cause = os.strerror(e.errno) if e.errno else str(e)  # create_server appends the address to strerror
        raise RefineSegError(f"{host}:{port}: cannot listen ({cause})") from None


def run_serve(config: ServeConfig) -> int:
    """Serve ``config.checkpoint`` until SIGTERM or Ctrl-C; returns the exit status (0)."""
    require_serve_dependencies()
    import uvicorn

    from refineseg.serve.app import create_app
    from refineseg.serve.service import SegmentService

    service = SegmentService.from_config(config)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            log_level=config.log_level,
            lifespan="on",
            timeout_graceful_shutdown=config.graceful_timeout_s or None,
        )
    )
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # uvicorn re-raises the signal it handled once it has shut down

    previous = signal.signal(signal.SIGTERM, note)
    config_name = service.model.config.name
    log.info(
        "serving %s (%s) on http://%s:%d (max batch %d, %s backend)",
        config_name,
        config.checkpoint,
        f"[{host}]" if ":" in host else host,
        port,
        config.max_batch,
        config.backend,
    )
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise RefineSegError(f"{host}:{port}: the server did not start (see the log above)")
    log.info("stopped%s", " by SIGTERM" if received else "")
    return 0
