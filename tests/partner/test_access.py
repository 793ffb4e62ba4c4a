"""API keys (constant-time, both header styles, open health/metrics) and CORS, in-process."""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.security import key_matches
from app.settings import Settings
from tests.partner.conftest import SHIPPED

KEYS = ["first-key-0123456789", "second-key-0123456789"]


def ready_client(**settings) -> TestClient:
    if not SHIPPED.is_file():
        pytest.skip(f"shipped model missing at {SHIPPED}")
    client = TestClient(create_app(Settings(**settings)))
    client.__enter__()
    deadline = time.monotonic() + 60
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "app never became ready"
        time.sleep(0.1)
    return client


@pytest.fixture(scope="module")
def client():
    client = ready_client(api_keys=KEYS, cors_origins=["https://viewer.example.org"])
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def png(fullres_images) -> bytes:
    """A real chest film (a synthetic picture would be refused by the input gate)."""
    from image_factory import encode, real_xray

    return encode(real_xray(fullres_images[0], size=256), "PNG")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"},
                                     {"X-API-Key": "wrong-key-0123456789"}, {"Authorization": "Basic abc"}])
def test_prediction_without_a_valid_key_is_401(client, png, headers, caplog):
    with caplog.at_level(logging.INFO):
        response = client.post("/predict", files={"file": ("x.png", png)}, headers=headers)
    assert response.status_code == 401
    body = response.json()["error"]
    assert body["code"] == "unauthorized" and body["request_id"]
    for key in [*KEYS, "wrong-key-0123456789"]:
        assert key not in caplog.text  # keys are never logged


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}])
def test_either_header_and_any_configured_key_is_accepted(client, png, headers):
    response = client.post("/predict", files={"file": ("x.png", png)}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path"), [("GET", "/models"), ("POST", "/admin/reload"),
                                              ("POST", "/predict/batch"), ("GET", "/v2/models/pneumonia"),
                                              ("POST", "/v2/models/pneumonia/infer")])
def test_every_prediction_model_and_admin_route_is_protected(client, method, path):
    assert client.request(method, path).status_code == 401


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics", "/v2/health/ready", "/v2"])
def test_health_and_metrics_stay_open_for_orchestration(client, path):
    assert client.get(path).status_code == 200


def test_key_comparison_checks_every_key():
    assert key_matches(KEYS[1], KEYS)
    assert not key_matches(KEYS[1][:-1], KEYS)
    assert not key_matches("", KEYS)


def test_short_keys_are_refused_at_start_up():
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(api_keys=["short"])
    assert Settings(api_keys="a" * 16 + "," + "b" * 20).api_keys == ["a" * 16, "b" * 20]


def test_cors_allows_only_the_configured_origin(client):
    allowed = client.options("/predict", headers={"Origin": "https://viewer.example.org",
                                                  "Access-Control-Request-Method": "POST"})
    assert allowed.headers.get("access-control-allow-origin") == "https://viewer.example.org"
    denied = client.options("/predict", headers={"Origin": "https://evil.example.com",
                                                 "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in denied.headers


def test_cors_is_off_by_default_and_keys_are_optional(png):
    client = ready_client()
    try:
        response = client.post("/predict", files={"file": ("x.png", png)}, headers={"Origin": "https://a.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
    finally:
        client.__exit__(None, None, None)
