"""``refineseg serve`` as a real process on a free loopback port: SIGTERM lets the request in flight
finish, refuses new connections and exits 0; startup problems are one-line errors (status 2)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from helpers import free_port
from serve_helpers import encode, photo

pytestmark = pytest.mark.slow

SLOW = ["--mode", "multiscale", "--scales", "1", "1.5", "2", "--flip"]  # a few seconds a request on one thread


def _wait_healthy(base: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {process.communicate()}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("server did not become healthy")


def _in_flight(base: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
        if line.startswith("refineseg_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_finishes_in_flight_request_and_exits_0(checkpoint):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refineseg",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
            "--max-wait-ms",
            "0",
            *SLOW,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_healthy(base, process)
        answer: dict = {}

        def request() -> None:
            response = httpx.post(
                base + "/v1/segment?format=json",
                content=encode(photo(0, 256, 320)),
                headers={"content-type": "image/png"},
                timeout=120,
            )
            answer.update(status=response.status_code, body=response.json(), at=time.monotonic())

        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 30
        while _in_flight(base) < 2 and time.monotonic() < deadline:  # /metrics itself is one
            time.sleep(0.05)
        assert _in_flight(base) >= 2, "the request never started"
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        if thread.is_alive():  # still computing: new connections are refused meanwhile
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
        thread.join(120)
        assert answer["status"] == 200 and (answer["body"]["width"], answer["body"]["height"]) == (320, 256)
        assert answer["at"] > signalled
        assert process.wait(timeout=60) == 0
        output = process.stdout.read()
        assert "stopped by SIGTERM" in output and "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_startup_errors_are_one_line(checkpoint, tmp_path, capsys):
    from refineseg.cli.app import main

    assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: 127.0.0.1:{port}: cannot listen (Address already in use)\n"


def test_missing_extra_from_the_command_line(checkpoint, capsys, monkeypatch):
    from refineseg.cli.app import main

    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'refineseg[serve]'" in err and "fastapi" in err
