"""Access-control fixtures: the identity provider stand-in with its JWKS served by a real HTTP server on a
free loopback port, a key file made by ``cxr-keys``, and the real app behind uvicorn on loopback with all of it
configured. Helpers live in access_helpers.py (a module name no other test folder uses)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # access_helpers (importlib mode)
from access_helpers import AUDIENCE, ISSUER, SCOPE_SETS, IdentityProvider, add_key
from app_harness import SERVER_SETTINGS, Running, serve
from image_factory import encode

from app.settings import Settings


@pytest.fixture(scope="session")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider.fetches += 1
            body = json.dumps(provider.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/realms/cxr/protocol/openid-connect/certs"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.jsonl"
    keys = {name: add_key(path, name, scopes) for name, scopes in SCOPE_SETS.items()}
    return path, keys


@pytest.fixture(scope="session")
def png() -> bytes:
    rng = np.random.default_rng(7)
    return encode((rng.random((96, 96)) * 255).astype(np.uint8), "PNG")


@pytest.fixture(scope="session")
def server(shipped_model: Path, key_file: tuple[Path, dict[str, str]], idp: IdentityProvider,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The real app, as a hospital would configure it (non-loopback host, keys from a file, sign-on tokens),
    listening on loopback for the test; the input gate off so a synthetic picture is answered."""
    folder = tmp_path_factory.mktemp("access-app")
    settings = Settings(**SERVER_SETTINGS, host="0.0.0.0", gate="off", api_keys_file=key_file[0],
                        oidc_jwks=idp.url, oidc_issuer=ISSUER, oidc_audience=AUDIENCE,
                        oidc_roles_claim="realm_access.roles", oidc_jwks_cooldown_s=0, audit_path=folder / "audit.db")
    with serve(settings) as running:
        yield running
