"""The console script as a real process: start on a free loopback port, predict over HTTP, SIGTERM, clean exit."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from app_harness import start_service_process

pytestmark = pytest.mark.slow



def test_cxr_serve_process_serves_and_exits_cleanly_on_sigterm(shipped_model, fullres_images, tmp_path):
    env = {**os.environ, "CXR_LOG_FORMAT": "json", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("CXR_MODEL_STORE", None)  # the default store: the shipped model
    service = start_service_process(tmp_path / "server.log", env)
    url = service.url
    try:
        service.wait_for("/health/ready")
        with httpx.Client(base_url=url, timeout=30) as client:
            film = fullres_images[-1]
            response = client.post("/predict", files={"file": (film.name, film.read_bytes())},
                                   headers={"X-Request-ID": "e2e-1"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["request_id"] == "e2e-1" and body["model"]["version"] == shipped_model.parent.name
            assert body["prediction"] in ("NORMAL", "PNEUMONIA")
            batch = client.post("/predict/batch", files=[("files", (p.name, p.read_bytes()))
                                                         for p in fullres_images[:4]])
            assert [r["status"] for r in batch.json()["results"]] == [200] * 4
            assert "cxr_http_requests_total" in client.get("/metrics").text
    finally:
        code = service.stop()
    output = service.log_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(r.get("message", "").startswith("e2e-1 POST /predict 200") for r in records), output[-2000:]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
