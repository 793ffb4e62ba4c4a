"""Every protected route x every kind of credential, over real HTTP (uvicorn on loopback): 401 without valid
credentials, 403 with valid ones lacking the scope, the route's own answer with the scope; both refusals in
the one error shape, naming what is missing."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from access_helpers import OPEN_PATHS, IdentityProvider, add_key
from app_harness import Running

Call = Callable[[httpx.Client, dict[str, str], bytes], httpx.Response]


def _infer_body(png: bytes) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]}


@dataclass(frozen=True)
class Route:
    scope: str
    name: str
    call: Call
    ok: int  # what the route itself answers an authorised caller


ROUTES = [Route(*entry) for entry in [
    ("predict", "POST /predict", lambda c, h, png: c.post("/predict", files={"file": ("x.png", png)}, headers=h), 200),
    ("predict", "POST /predict/batch",
     lambda c, h, png: c.post("/predict/batch", files=[("files", ("a.png", png)), ("files", ("b.png", png))],
                              headers=h), 200),
    ("predict", "POST /v2/models/pneumonia/infer",
     lambda c, h, png: c.post("/v2/models/pneumonia/infer", json=_infer_body(png), headers=h), 200),
    ("predict", "GET /v2/models/pneumonia", lambda c, h, png: c.get("/v2/models/pneumonia", headers=h), 200),
    ("predict", "POST /ui/preview", lambda c, h, png: c.post("/ui/preview", files={"file": ("x.png", png)}, headers=h),
     200),
    # an unknown request id: the route's own 404 says the caller got through
    ("feedback", "POST /feedback", lambda c, h, png: c.post("/feedback", json={"request_id": "never-answered",
                                                                              "label": "NORMAL"}, headers=h), 404),
    ("monitor", "GET /monitoring", lambda c, h, png: c.get("/monitoring", headers=h), 200),
    ("monitor", "GET /models", lambda c, h, png: c.get("/models", headers=h), 200),
    # a version the store lacks: the route's own 404, and the served model is left alone
    ("admin", "POST /admin/reload",
     lambda c, h, png: c.post("/admin/reload", json={"version": 999}, headers=h), 404),
]]
IDS = [route.name for route in ROUTES]


def assert_refused(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "request_id"}
    assert error["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    assert error["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word in error["message"], error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    return error


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_api_keys(server: Running, key_file: tuple[Path, dict[str, str]], png: bytes, route: Route) -> None:
    _, keys = key_file
    scope, call, ok = route.scope, route.call, route.ok
    client = server.client
    assert_refused(call(client, {}, png), 401, "missing credentials")
    assert_refused(call(client, {"X-API-Key": "cxr_" + "x" * 43}, png), 401, "invalid")
    holder = {"predict": "predictor", "feedback": "reader", "monitor": "watcher", "admin": "operator"}[scope]
    for name, key in keys.items():
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            response = call(client, headers, png)
            if name in (holder, "everything") or (name == "partner" and scope in ("predict", "feedback")):
                assert response.status_code == ok, (name, response.text)
            else:
                error = assert_refused(response, 403, f"'{scope}' scope", name)
                assert error["details"] == {"required_scope": scope}
                assert f'scope="cxr:{scope}"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_sign_on_tokens(server: Running, idp: IdentityProvider, png: bytes, route: Route) -> None:
    client = server.client
    scope, call, ok = route.scope, route.call, route.ok

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    granted = idp.token(scope=f"openid cxr:{scope}")
    assert call(client, bearer(granted), png).status_code == ok
    as_list = idp.token(scope=None, scp=[f"cxr:{scope}"])  # Azure AD style
    assert call(client, bearer(as_list), png).status_code == ok
    as_role = idp.token(scope="openid", realm_access={"roles": [f"cxr:{scope}"]})  # Keycloak realm roles
    assert call(client, bearer(as_role), png).status_code == ok
    others = " ".join(f"cxr:{s}" for s in ("predict", "feedback", "monitor", "admin") if s != scope)
    assert_refused(call(client, bearer(idp.token(scope=f"openid {others} {scope}")), png), 403, f"'{scope}' scope",
                   "ris-service-account")
    now = int(time.time())
    for token, words in [
        (idp.token(scope=f"cxr:{scope}", exp=now - 120, iat=now - 600, nbf=now - 600), ("expired",)),
        (idp.token(scope=f"cxr:{scope}", nbf=now + 600, iat=now), ("not yet valid",)),
        (idp.token(scope=f"cxr:{scope}", aud="another-service"), ("audience",)),
        (idp.token(scope=f"cxr:{scope}", iss="https://sso.elsewhere.test/realms/cxr"), ("issuer",)),
        (idp.unsigned_token(scope=f"cxr:{scope}"), ("'none'", "not accepted")),
        (idp.hs256_with_public_key(scope=f"cxr:{scope}"), ("'HS256'", "not accepted")),
        (granted[:-4] + ("AAAA" if not granted.endswith("AAAA") else "BBBB"), ("invalid token",)),
    ]:
        assert_refused(call(client, bearer(token), png), 401, *words)


def test_open_routes_need_nothing(server: Running) -> None:
    for path in OPEN_PATHS:
        assert server.client.get(path).status_code == 200, path
    assert server.client.get("/ui/config").json()["api_key_required"] is True


def test_revoked_key_is_refused_without_a_restart(server: Running, key_file: tuple[Path, dict[str, str]],
                                                  png: bytes) -> None:
    from app.access.keys_cli import main as keys_main

    path, _ = key_file
    key = add_key(path, "short-lived", "monitor")
    headers = {"X-API-Key": key}
    assert server.client.get("/models", headers=headers).status_code == 200
    assert keys_main(["revoke", "short-lived", "--file", str(path)]) == 0
    assert_refused(server.client.get("/models", headers=headers), 401, "invalid")


def test_signing_key_rotation_by_kid(server: Running, idp: IdentityProvider) -> None:
    """A token signed with a key the provider published after the service cached its JWKS: fetched again."""
    idp.add_key("ec-2", curve=True)
    before = idp.fetches
    headers = {"Authorization": f"Bearer {idp.token('ec-2', scope='cxr:monitor')}"}
    response = server.client.get("/models", headers=headers)
    assert response.status_code == 200, response.text
    assert idp.fetches == before + 1
    assert server.client.get("/models", headers=headers).status_code == 200
    assert idp.fetches == before + 1, "the JWKS is cached, not fetched per request"
