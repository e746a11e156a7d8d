"""Backbone weights by name (refineseg.models.hub) against a loopback HTTP server: cache, download, errors, CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from helpers import free_port, manifest, random_state

import refineseg
from refineseg.cli.app import main
from refineseg.models import MODELS, hub


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[name] = (body, content_length)`` at ``/models/<name>``; 404 otherwise."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.server.routes.get(self.path.removeprefix("/models/"))
        if route is None:
            self.send_error(404)
            return
        body, length = route
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)  # a body shorter than Content-Length: the connection closes early
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(routes: dict[str, bytes | tuple[bytes, int]], lifetime_s: float = 60.0) -> Iterator[str]:
    """A loopback HTTP server in a thread; yields its base URL. It stops on exit, or by itself after ``lifetime_s``."""
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {k: v if isinstance(v, tuple) else (v, len(v)) for k, v in routes.items()}
    server.timeout = 0.05
    stop, deadline = threading.Event(), time.monotonic() + lifetime_s

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/models/"
    finally:
        stop.set()
        thread.join(5)
        server.server_close()


def hashed_name(stem: str, data: bytes) -> str:
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """Empty refineseg and torch hub caches; no mirror; the progress bar off. Returns refineseg's cache folder."""
    monkeypatch.setenv("REFINESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("REFINESEG_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "home" / "weights"


@pytest.fixture
def tiny(monkeypatch) -> tuple[str, bytes]:
    """A small file registered as backbone ``tiny``'s ``imagenet`` weights: ``(file name, bytes)``."""
    data = bytes(range(256)) * 300
    name = hashed_name("tiny", data)
    monkeypatch.setitem(hub.FILES, ("tiny", "imagenet"), name)
    return name, data


def offline(monkeypatch) -> str:
    """Point the mirror at a closed loopback port (the download fails at once); returns the file base URL."""
    base = f"http://127.0.0.1:{free_port()}/models/"
    monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
    return base


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_table_covers_every_backbone_with_torchvision_names():
    for spec in MODELS.values():
        assert hub.weights_file(spec.backbone, "imagenet").startswith(spec.backbone + "-")
    for file in hub.FILES.values():
        assert len(hub.sha256_prefix(file)) == 8 and file.endswith(".pth")
        assert hub.weights_url(file) == "https://download.pytorch.org/models/" + file
    assert hub.tags() == ["imagenet", "imagenet_v2"]


def test_download_lands_in_cache(tiny, isolated, monkeypatch):
    name, data = tiny
    with serve({name: data}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base.rstrip("/"))  # with or without the slash
        path, source = hub.fetch_weights("tiny", progress=False)
    assert (path, source) == (isolated / name, "downloaded")
    assert path.read_bytes() == data and path.stat().st_mode & 0o777 == 0o644
    assert files_in(isolated) == [name]


def test_cache_hit_with_the_server_gone(tiny, isolated, monkeypatch):
    name, data = tiny
    with serve({name: data}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
        hub.resolve_backbone_weights("tiny", progress=False)
    offline(monkeypatch)
    assert hub.fetch_weights("tiny", progress=False) == (isolated / name, "refineseg cache")


@pytest.mark.parametrize("fault", ["corrupted", "truncated"])
def test_bad_download_is_rejected_and_leaves_nothing(tiny, isolated, monkeypatch, fault):
    name, data = tiny
    body = (data[:-1] + b"x", len(data)) if fault == "corrupted" else (data[: len(data) // 2], len(data))
    with serve({name: body}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
        with pytest.raises(refineseg.CheckpointError) as info:
            hub.resolve_backbone_weights("tiny", progress=False)
    message = str(info.value)
    assert ("SHA-256 mismatch" if fault == "corrupted" else "incomplete download") in message
    assert message.startswith(base + name) and str(isolated / name) in message and "\n" not in message
    assert files_in(isolated) == []  # neither the file nor a temporary one


def test_offline_message_names_url_hash_and_target(tiny, isolated, monkeypatch):
    name, _ = tiny
    base = offline(monkeypatch)
    with pytest.raises(refineseg.CheckpointError) as info:
        hub.resolve_backbone_weights("tiny", progress=False)
    message = str(info.value)
    assert base + name in message and hub.sha256_prefix(name) in message and str(isolated / name) in message
    assert "cannot download" in message and "\n" not in message
    assert files_in(isolated) == []


def test_http_error_is_one_line(tiny, monkeypatch):
    with serve({}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
        with pytest.raises(refineseg.CheckpointError, match="HTTP 404"):
            hub.resolve_backbone_weights("tiny", progress=False)


def test_torch_hub_folder_is_used(tiny, isolated, monkeypatch):
    name, data = tiny
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / name).write_bytes(data)
    offline(monkeypatch)
    assert hub.fetch_weights("tiny", progress=False) == (checkpoints / name, "torch hub cache")
    assert files_in(isolated) == []


def test_corrupted_cache_file_is_an_error_naming_it(tiny, isolated, monkeypatch):
    name, data = tiny
    isolated.mkdir(parents=True)
    (isolated / name).write_bytes(data[:100])
    offline(monkeypatch)
    with pytest.raises(refineseg.CheckpointError) as info:
        hub.resolve_backbone_weights("tiny", progress=False)
    assert str(info.value).startswith(f"{isolated / name}: SHA-256") and "delete it" in str(info.value)
    assert (isolated / name).exists()  # reported, not silently replaced


def test_installed_package_is_a_source(tiny, tmp_path, monkeypatch):
    """A distribution that ships the file (found through its RECORD) is used when no cache has it."""
    name, data = tiny
    site = tmp_path / "site"
    (site / "fake_weights" / "files").mkdir(parents=True)
    (site / "fake_weights" / "files" / name).write_bytes(data)
    info = site / "fake_weights-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-weights\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"fake_weights/files/{name},,\nfake_weights-1.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(hub.PACKAGED, name, "fake-weights")
    offline(monkeypatch)
    path, source = hub.fetch_weights("tiny", progress=False)
    assert path.samefile(site / "fake_weights" / "files" / name) and source == "package fake-weights"


def test_unknown_tag_lists_the_available_ones():
    with pytest.raises(refineseg.CheckpointError, match="imagenet_v2.*resnet18.*available: imagenet$"):
        refineseg.create_model("lw_refinenet18", backbone_weights="imagenet_v2")
    with pytest.raises(refineseg.CheckpointError, match="resnet101:imagenet_v2"):
        hub.parse_name("resnet18:imagenet_v2")
    assert hub.parse_name("resnet101:imagenet_v2") == ("resnet101", "imagenet_v2")
    assert hub.parse_name("mobilenet_v2") == ("mobilenet_v2", "imagenet")


def test_create_model_with_imagenet_tag_end_to_end(isolated, monkeypatch):
    state = random_state(manifest("torchvision_resnet18")["state_dict"], seed=18)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    name = hashed_name("resnet18", buffer.getvalue())
    monkeypatch.setitem(hub.FILES, ("resnet18", "imagenet"), name)
    with serve({name: buffer.getvalue()}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
        model = refineseg.create_model("lw_refinenet18", num_classes=3, backbone_weights="imagenet")
    loaded = model.encoder.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert files_in(isolated) == [name]


def test_cli_lists_and_fetches(tiny, isolated, monkeypatch, capsys):
    name, data = tiny
    with serve({name: data}) as base:
        monkeypatch.setenv("REFINESEG_WEIGHTS_MIRROR", base)
        assert main(["weights"]) == 0
        listing = capsys.readouterr().out
        row = next(line for line in listing.splitlines() if line.startswith("| tiny "))
        assert base + name in row and hub.sha256_prefix(name) in row and "not cached" in row
        assert "resnet101:imagenet_v2" in listing

        assert main(["weights", "fetch", "tiny"]) == 0
        assert capsys.readouterr().out.strip() == f"tiny: {isolated / name} (downloaded, SHA-256 verified)"
    assert (isolated / name).read_bytes() == data

    assert main(["weights"]) == 0
    assert f"{isolated / name} (refineseg cache)" in capsys.readouterr().out

    assert main(["weights", "fetch", "tiny", "resnet18:imagenet_v2"]) == 2  # names are checked first
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: weights 'resnet18:imagenet_v2'")
    assert captured.err.count("\n") == 1
