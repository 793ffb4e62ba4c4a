"""Access-control fixtures: a real identity provider stand-in (RSA and EC keys made with ``cryptography``, its
JWKS served by a real HTTP server on a free loopback port), a key file made by ``cxr-keys``, and the real app
behind uvicorn on loopback with all of it configured."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, Running, serve
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from image_factory import encode

from app.access.keys_cli import main as keys_main
from app.settings import Settings

ISSUER = "https://sso.hospital.test/realms/cxr"
AUDIENCE = "cxr-serve"
SCOPE_SETS = {"predictor": "predict", "reader": "feedback", "watcher": "monitor", "operator": "admin",
              "partner": "predict,feedback", "everything": "predict,feedback,monitor,admin"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IdentityProvider:
    """Signs tokens like a hospital's OpenID Connect provider and publishes its public keys as a JWKS."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.published = ["rsa-1"]
        self.fetches = 0
        self.url = ""

    def add_key(self, kid: str, *, curve: bool = False) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1()) if curve else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        documents = []
        for kid in self.published:
            algorithm = jwt.algorithms.ECAlgorithm if isinstance(self.keys[kid], ec.EllipticCurvePrivateKey) \
                else jwt.algorithms.RSAAlgorithm
            jwk = json.loads(algorithm.to_jwk(self.keys[kid].public_key()))
            documents.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": documents}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ris-service-account", "iat": now, "nbf": now,
                  "exp": now + 300, "scope": "openid cxr:predict"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str = "rsa-1", **overrides: Any) -> str:
        key = self.keys[kid]
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(self.claims(**overrides), key, algorithm=algorithm, headers={"kid": kid})

    def unsigned_token(self, **overrides: Any) -> str:
        """``alg: none``: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(**overrides)).encode())}."

    def hs256_with_public_key(self, **overrides: Any) -> str:
        """The classic confusion attack: HMAC-SHA256 keyed with the provider's published public key."""
        public = self.keys["rsa-1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        signing_input = f"{header}.{_b64(json.dumps(self.claims(**overrides)).encode())}"
        return f"{signing_input}.{_b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"


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


def add_key(path: Path, name: str, scopes: str, capsys: pytest.CaptureFixture[str] | None = None) -> str:
    """``cxr-keys add`` as an operator runs it; the key is the last line of its output."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keys_main(["add", name, "--scopes", scopes, "--file", str(path)]) == 0
    return out.getvalue().strip().splitlines()[-1]


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
                        oidc_roles_claim="realm_access.roles", audit_path=folder / "audit.db")
    with serve(settings) as running:
        yield running
