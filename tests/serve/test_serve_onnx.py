"""``refineseg serve --backend onnxruntime``: an exported file answers what ``predict --backend
onnxruntime`` writes, batched or not."""

from __future__ import annotations

import pytest
from serve_helpers import encode, make_service, photo, post_concurrently

from refineseg.cli.predict import PredictConfig, run_predict

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_onnxruntime_backend_matches_predict_and_batches(exported_mbv2, tmp_path):
    onnx_file = exported_mbv2.path
    bodies = [encode(photo(seed, 48, 64)) for seed in range(6)]
    for i, body in enumerate(bodies):
        (tmp_path / f"p{i}.png").write_bytes(body)
    run_predict(
        PredictConfig(
            checkpoint=str(onnx_file),
            backend="onnxruntime",
            inputs=[str(tmp_path / f"p{i}.png") for i in range(6)],
            out=str(tmp_path / "out"),
            overlay=False,
        )
    )
    expected = [(tmp_path / "out" / f"p{i}.png").read_bytes() for i in range(6)]

    service = make_service(onnx_file, backend="onnxruntime", max_batch=6, max_wait_ms=300)
    responses, batches = post_concurrently(service, bodies)
    assert [r.status_code for r in responses] == [200] * 6
    assert [r.content for r in responses] == expected
    assert max(len(b) for b in batches) > 1 and service.model_info()["options"]["backend"] == "onnxruntime"
