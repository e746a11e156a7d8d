"""``refineseg serve`` endpoints through FastAPI's TestClient: answers, formats, error codes, metrics.

The label PNG served for an upload is compared byte for byte with the file ``refineseg predict``
writes for the same image file.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import numpy as np
import pytest
from helpers import CLASS_NAMES, PALETTE
from PIL import Image
from serve_helpers import encode, make_client, photo

from refineseg.cli.predict import PredictConfig, run_predict
from refineseg.errors import MissingDependencyError
from refineseg.serve import require_serve_dependencies

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(checkpoint):
    with make_client(checkpoint, max_upload_mb=0.05) as c:  # 52 KB: room for the test photos
        yield c


def post(client, data: bytes, content_type: str = "image/png", **params):
    return client.post("/v1/segment", content=data, headers={"content-type": content_type}, params=params)


def test_health_and_model(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["name"] == "lw_refinenet_mbv2" and info["classes"] == CLASS_NAMES
    assert info["palette"] == [list(c) for c in PALETTE]
    assert info["options"]["mode"] == "whole" and info["options"]["max_batch"] == 8


@pytest.mark.parametrize("suffix, format", [(".png", "PNG"), (".jpg", "JPEG")])
def test_label_png_equals_predict(client, checkpoint, tmp_path, suffix, format):
    """Raw body and multipart answers are the exact bytes `refineseg predict` writes."""
    data = encode(photo(1, 72, 96), format)
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(data)
    run_predict(PredictConfig(checkpoint=str(checkpoint), inputs=[str(path)], out=str(tmp_path / "out"), overlay=False))
    expected = (tmp_path / "out" / "photo.png").read_bytes()

    raw = post(client, data, f"image/{format.lower()}")
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert raw.content == expected
    multipart = client.post("/v1/segment", files={"image": (path.name, data, "application/octet-stream")})
    assert multipart.status_code == 200 and multipart.content == expected
    labels = np.asarray(Image.open(io.BytesIO(raw.content)))
    assert labels.shape == (72, 96) and len(np.unique(labels)) > 1


def test_overlay_and_json(client):
    image = photo(2)
    labels = np.asarray(Image.open(io.BytesIO(post(client, encode(image)).content)))
    shown = Image.open(io.BytesIO(post(client, encode(image), format="overlay", alpha=0.0).content))
    assert shown.mode == "RGB" and shown.width > image.shape[1]  # photo + legend on the right
    assert np.array_equal(np.asarray(shown)[:48, :64], image)  # alpha 0: the photo itself

    summary = post(client, encode(image), format="json", labels="true").json()
    assert (summary["width"], summary["height"]) == (64, 48)
    counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))
    assert [c["index"] for c in summary["classes"]] == np.flatnonzero(counts).tolist()
    assert sum(c["pixels"] for c in summary["classes"]) == labels.size
    assert abs(sum(c["fraction"] for c in summary["classes"]) - 1) < 1e-4
    assert summary["classes"][0]["name"] == CLASS_NAMES[summary["classes"][0]["index"]]
    import base64

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(summary["labels_png"])))), labels)


def test_bad_uploads_get_one_line_400(client, caplog):
    good = encode(photo(3))
    with caplog.at_level(logging.WARNING, logger="refineseg.serve"):
        cases = {
            "not an image": post(client, b"definitely not a picture"),
            "truncated": post(client, good[: len(good) // 2]),
            "gif header only": post(client, b"GIF89a broken", "image/gif"),
            "empty": post(client, b""),
            "wrong type": post(client, good, "text/plain"),
            "bad format": post(client, good, format="bmp"),
            "bad alpha": post(client, good, format="overlay", alpha=2),
            "no field": client.post("/v1/segment", files={"photo": ("a.png", good, "image/png")}),
        }
    for name, response in cases.items():
        assert response.status_code == 400, name
        error = response.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error, name
    assert "not an image" in cases["not an image"].json()["error"]
    assert "truncated" in cases["truncated"].json()["error"]
    logged = [r.getMessage() for r in caplog.records if r.name == "refineseg.serve"]
    assert len(logged) == len(cases) and all(" 400 " in line and "\n" not in line for line in logged)
    assert post(client, good).status_code == 200  # still serving


def test_upload_limit_413(client):
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 KB as PNG
    data = encode(big)
    assert len(data) > 0.05 * 2**20
    assert post(client, data).status_code == 413
    chunked = client.post(
        "/v1/segment",
        content=iter([data[i : i + 8192] for i in range(0, len(data), 8192)]),
        headers={"content-type": "image/png"},
    )  # no Content-Length: counted while read
    assert chunked.status_code == 413 and "max-upload-mb" in chunked.json()["error"]
    multipart = client.post("/v1/segment", files={"image": ("big.png", data, "image/png")})
    assert multipart.status_code == 413


def test_internal_error_is_500_and_server_survives(checkpoint):
    with make_client(checkpoint) as client:
        service = client.app.state.service
        run = service.batcher.run_batch

        def fail(images):
            raise RuntimeError("simulated\nbackend failure")

        service.batcher.run_batch = fail
        response = post(client, encode(photo(4)))
        assert (
            response.status_code == 500
            and response.json()["error"] == "internal error (RuntimeError: simulated backend failure)"
        )
        service.batcher.run_batch = run
        assert post(client, encode(photo(4))).status_code == 200


def test_metrics(checkpoint):
    with make_client(checkpoint) as client:
        for seed in range(3):
            assert post(client, encode(photo(seed))).status_code == 200
        post(client, b"junk")
        text = client.get("/metrics").text
    assert 'refineseg_requests_total{endpoint="/v1/segment",status="200"} 3.0' in text
    assert 'refineseg_requests_total{endpoint="/v1/segment",status="400"} 1.0' in text
    assert 'refineseg_errors_total{reason="bad_image"} 1.0' in text
    assert 'refineseg_request_latency_seconds_count{endpoint="/v1/segment"} 4.0' in text
    assert "refineseg_batch_size_count 3.0" in text
    assert "refineseg_queue_depth 0.0" in text


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "<script src" not in page.text


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'refineseg\[serve\]'") as info:
        require_serve_dependencies()
    assert "uvicorn" in str(info.value) and "\n" not in str(info.value)


def test_json_is_valid_for_unknown_class_names(checkpoint, tmp_path):
    """A label without a name (255 in a custom palette setup) still serializes."""
    from serve_helpers import make_service

    service = make_service(checkpoint)
    labels = np.array([[0, 255], [1, 1]], np.uint8)
    summary = service.summary(labels)
    assert json.loads(json.dumps(summary))["classes"][-1] == {
        "index": 255,
        "name": "255",
        "color": None,
        "pixels": 1,
        "fraction": 0.25,
    }
