"""A missing or corrupt model at start-up. Decision: the process stays up and says why on both probes
(readiness AND liveness 503, so an orchestrator restarts it and a person reads the reason), logs one clear
error line, and never answers a prediction: every model route says 503 not_ready."""

from __future__ import annotations

import logging
import shutil
import time

import hostile
import pytest
from fastapi.testclient import TestClient
from reliability_support import SHIPPED_MODEL, SHIPPED_STORE, assert_error, require_shipped_model, wait_ready


def broken_store(tmp_path, kind: str):
    store = tmp_path / "store"
    folder = store / "pneumonia" / "1"
    folder.mkdir(parents=True)
    model = folder / "model.h5"
    if kind == "not HDF5":
        model.write_bytes(b"this is not a model\n" * 100)
    elif kind == "truncated HDF5":
        require_shipped_model()
        model.write_bytes(SHIPPED_MODEL.read_bytes()[:200_000])
    elif kind == "empty file":
        model.write_bytes(b"")
    elif kind == "no version folder":
        shutil.rmtree(folder)
    elif kind == "HDF5 without our metadata":
        import h5py

        with h5py.File(model, "w") as handle:
            handle["weights"] = [1.0, 2.0]
    return store


CASES = {  # kind -> words the reason must contain
    "not HDF5": "not an HDF5 file",
    "truncated HDF5": "ArtifactError",
    "empty file": "ArtifactError",
    "no version folder": "no versions of model 'pneumonia'",
    "HDF5 without our metadata": "not a cxr-serve artifact",
}


def wait_failed(client: TestClient, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = client.get("/health/live")
        if live.status_code == 503:
            return live.json()
        time.sleep(0.05)
    raise AssertionError("the load failure never showed on /health/live")


@pytest.mark.parametrize("kind", list(CASES))
def test_broken_model_at_start_reports_not_ready_and_not_live_and_serves_nothing(tmp_path, caplog, kind):
    from app.main import create_app
    from app.settings import Settings

    store = broken_store(tmp_path, kind)
    caplog.set_level(logging.ERROR, logger="cxr.model")
    with TestClient(create_app(Settings(model_store=store)), raise_server_exceptions=False) as client:
        live = wait_failed(client)
        assert live["status"] == "failed" and CASES[kind] in live["reason"]
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert CASES[kind] in ready.json()["reason"]
        for body in (live, ready.json()):
            assert str(tmp_path) not in body["reason"], "an open probe must not reveal server paths"
        assert client.get("/v2/health/live").status_code == 503
        assert client.get("/v2/health/ready").status_code == 503
        error = assert_error(client.post("/predict", files={"file": ("x.png", hostile.png(), "image/png")}), 503,
                             "not_ready")
        assert "model failed to load" in error["message"]
        assert_error(client.get("/models"), 503, "not_ready")
        response = client.post("/predict/batch", files=[("files", ("x.png", hostile.png(), "image/png"))])
        assert_error(response, 503, "not_ready")
    lines = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(lines) == 1 and CASES[kind] in lines[0], lines  # one clear line, with the full detail


def test_requests_during_the_load_get_503_never_a_half_loaded_model():
    from app.main import create_app
    from app.settings import Settings

    require_shipped_model()
    with TestClient(create_app(Settings(model_store=SHIPPED_STORE, gate="off")),  # synthetic films
                    raise_server_exceptions=False) as client:
        early = client.post("/predict", files={"file": ("x.png", hostile.png(), "image/png")})
        if early.status_code == 503:  # the load takes seconds; this is the normal case
            assert_error(early, 503, "not_ready")
            assert client.get("/health/ready").json()["reason"] in ("model loading", None)
            assert client.get("/health/live").status_code == 200  # loading is not a failure
        else:
            assert early.status_code == 200
        wait_ready(client)
        assert client.post("/predict", files={"file": ("x.png", hostile.png(), "image/png")}).status_code == 200
