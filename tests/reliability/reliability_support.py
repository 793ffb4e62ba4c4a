"""tests/reliability helpers: the real app (shipped model), error-shape assertions, and a helper that runs
``cxr-serve`` as a real process on a free loopback port. A module of its own, not conftest: test files import it
by a name no other test folder uses (several conftest.py files, importlib mode)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_harness import ServiceProcess, start_service_process
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hostile.py (pytest runs in importlib mode)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_STORE = REPO_ROOT / "model_store"
SHIPPED_MODEL = SHIPPED_STORE / "pneumonia" / "1" / "model.h5"

# what must never reach a client: stack traces, file paths, object addresses, exception reprs
LEAKS = re.compile(r"Traceback|File \"|/work/|/home/|/tmp/|site-packages|\.py\b|at 0x[0-9a-f]+|<[a-zA-Z_.]+ object")


def require_shipped_model() -> None:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"shipped model not found at {SHIPPED_MODEL} (train it: make train-default)")


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return
        if client.get("/health/live").status_code == 503:
            raise AssertionError(f"model failed to load: {response.json()}")
        time.sleep(0.05)
    raise AssertionError("service not ready in time")


@contextlib.contextmanager
def running_app(**settings: Any) -> Iterator[TestClient]:
    """The real app (lifespan included) with the shipped model, ready. ``settings`` override the defaults."""
    from app.main import create_app
    from app.settings import Settings

    require_shipped_model()
    app = create_app(Settings(**{"model_store": SHIPPED_STORE, **settings}))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The one error shape, with the exact status and code, the request id echoed, and nothing leaked."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) - {"details"} == {"code", "message", "request_id"}, error
    assert isinstance(error.get("details", {}), dict), error  # machine-readable extras (e.g. a gate score)
    assert error["code"] == code, error
    assert error["message"] and isinstance(error["message"], str)
    assert error["request_id"] and error["request_id"] == response.headers["x-request-id"]
    assert not LEAKS.search(error["message"]), f"error message leaks internals: {error['message']!r}"
    return error


def assert_ready(client: TestClient | httpx.Client) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def assert_prediction(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    probabilities = body["probabilities"]
    assert set(probabilities) == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(probabilities.values()) - 1.0) < 1e-4
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert body["prediction"] in probabilities
    return body


def fresh_memory_accounting(command: list[str]) -> list[str]:
    """``command`` run through a shell that forks it. On Linux a child's peak RSS (``ru_maxrss``, what libFuzzer's
    -rss_limit_mb and our memory probes read) starts at its parent's, and survives exec: a process started
    straight from this pytest (TensorFlow and models loaded, about 2 GB) would begin "at" 2 GB."""
    return ["sh", "-c", '"$@"; exit $?', "sh", *command]


# -- a real process ---------------------------------------------------------------------------------------

def start_server(log: Path, **env: str) -> ServiceProcess:
    """``cxr-serve`` as a real process on a free loopback port; CXR_* from ``env``."""
    return start_service_process(log, {**os.environ, "CXR_DEVICE": "cpu", "CXR_LOG_LEVEL": "info",
                                       "TF_CPP_MIN_LOG_LEVEL": "2", **env})
