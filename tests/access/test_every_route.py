"""Every route the app has, found from the app itself, refuses a caller without credentials unless it is one of
the few routes left open on purpose. test_routes.py lists the protected routes by hand and checks each scope; this
catches a route added later (or a scope check moved between a router and a route's dependencies) that nobody
listed there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from access_helpers import OPEN_PATHS, add_key
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

# open for orchestration, scrapers and the review page's static files (routes/__init__.py says why): the paths
# test_routes.py calls, and those it does not (path parameters, server metadata, FastAPI's own documentation)
OPEN = {*OPEN_PATHS, "/", "/v2", "/ui/assets/{name}", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def every_route(routes: list) -> list:
    """The app's routes, through FastAPI's included-router wrappers (``original_router``)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += every_route(inner.routes) if inner is not None else [route]
    return found


def test_every_route_but_the_open_ones_refuses_a_caller_without_credentials(shipped_model: Path,
                                                                           tmp_path: Path) -> None:
    """(``shipped_model``: the default store the settings read must exist.)"""
    keys = tmp_path / "keys.jsonl"
    add_key(keys, "partner", "predict")
    # no lifespan (no TestClient context): the model never loads, and the check comes before any route's work
    app = create_app(Settings(api_keys_file=keys, audit_path=tmp_path / "audit.db", runtime="keras", gate="off"))
    client = TestClient(app, raise_server_exceptions=False)
    checked = []
    for route in every_route(app.routes):
        if not isinstance(route, APIRoute) or route.path in OPEN:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            response = client.request(method, path)
            assert response.status_code == 401, f"{method} {route.path}: {response.status_code} {response.text}"
            assert response.json()["error"]["code"] == "unauthorized"
            checked.append(f"{method} {route.path}")
    assert {"POST /predict", "POST /predict/batch", "POST /admin/reload", "GET /models"} <= set(checked)
    assert len(checked) >= 12, checked


@pytest.mark.parametrize("path", sorted(OPEN - {"/docs/oauth2-redirect"}))
def test_the_open_routes_exist(shipped_model: Path, tmp_path: Path, path: str) -> None:
    """The open list names routes the app really has (a stale entry would hide nothing, but would mislead)."""
    app = create_app(Settings(audit_path=tmp_path / "audit.db", runtime="keras", gate="off"))
    assert path in {getattr(route, "path", None) for route in every_route(app.routes)}
