"""Secure by default, over real HTTP: beyond loopback with nothing configured every protected route answers
401 saying how to configure access; CXR_ALLOW_UNAUTHENTICATED=true opens it with one warning line; loopback
stays open. The deprecated flat CXR_API_KEYS keeps working (every scope) with one deprecation line. The
per-caller rate limit answers 429 with Retry-After and recovers, without touching other callers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from access_helpers import add_key
from app_harness import SERVER_SETTINGS, serve

from app.access.control import AccessControl, is_loopback
from app.settings import Settings

PROTECTED = [("POST", "/predict"), ("POST", "/predict/batch"), ("POST", "/v2/models/pneumonia/infer"),
             ("GET", "/v2/models/pneumonia"), ("POST", "/ui/preview"), ("POST", "/feedback"), ("GET", "/monitoring"),
             ("GET", "/models"), ("POST", "/admin/reload")]
LEGACY_KEY = "legacy-flat-key-0123456789abcdef"


def _access_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cxr.access" and r.levelno == level]


def test_host_kinds() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "cxr.hospital.org"))
    assert AccessControl(Settings()).open, "make serve (127.0.0.1, nothing configured) stays open"


def test_exposed_without_access_control_refuses(shipped_model: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = Settings(**SERVER_SETTINGS, host="0.0.0.0", audit_path=tmp_path / "audit.db")
    with serve(settings) as running:
        for method, path in PROTECTED:
            response = running.client.request(method, path, headers={"X-API-Key": "whatever-0123456789abcdef"})
            assert response.status_code == 401, (path, response.text)
            message = response.json()["error"]["message"]
            assert "0.0.0.0" in message and "CXR_API_KEYS_FILE" in message and "CXR_OIDC_JWKS" in message
            assert "CXR_ALLOW_UNAUTHENTICATED=true" in message
        assert running.client.get("/health/ready").status_code == 200
        assert running.client.get("/ui/config").json()["api_key_required"] is True
    assert len(_access_lines(caplog, logging.ERROR)) == 1


def test_allow_unauthenticated_opens_with_one_warning(shipped_model: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = Settings(**SERVER_SETTINGS, host="0.0.0.0", allow_unauthenticated=True,
                        audit_path=tmp_path / "audit.db")
    with serve(settings) as running:
        assert running.client.get("/models").status_code == 200
        assert running.client.get("/monitoring").status_code == 200
        assert running.client.get("/ui/config").json()["api_key_required"] is False
    (warning,) = _access_lines(caplog, logging.WARNING)
    assert "CXR_ALLOW_UNAUTHENTICATED=true" in warning


def test_flat_keys_and_rate_limit(shipped_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key_file = tmp_path / "keys.jsonl"
    watcher = add_key(key_file, "watcher", "monitor")
    settings = Settings(**SERVER_SETTINGS, host="0.0.0.0", api_keys=[LEGACY_KEY], api_keys_file=key_file,
                        rate_limit="4/second", audit_path=tmp_path / "audit.db")
    with serve(settings) as running:
        client = running.client
        (deprecation,) = _access_lines(caplog, logging.WARNING)
        assert "CXR_API_KEYS is deprecated" in deprecation and LEGACY_KEY not in deprecation
        legacy = {"X-API-Key": LEGACY_KEY}
        assert client.post("/admin/reload", json={"version": 999}, headers=legacy).status_code == 404
        assert client.post("/feedback", json={"request_id": "x", "label": "NORMAL"}, headers=legacy).status_code == 404
        # a burst beyond 4 per second: refused with 429 until a token comes back (one every 0.25 s)
        responses = [client.get("/models", headers=legacy) for _ in range(12)]
        limited = next(r for r in responses if r.status_code != 200)
        assert responses[0].status_code == 200
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert client.get("/models", headers={"X-API-Key": watcher}).status_code == 200, "other callers unaffected"
        time.sleep(0.6)  # 4 per second: a token every 0.25 s
        assert client.get("/models", headers=legacy).status_code == 200, "recovers"
