"""Access-control test helpers: an identity provider stand-in (RSA and EC keys made with ``cryptography``)
that signs tokens, good and forged, and publishes its JWKS; ``cxr-keys add`` as an operator runs it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.access.keys_cli import main as keys_main

ISSUER = "https://sso.hospital.test/realms/cxr"
AUDIENCE = "cxr-serve"
# routes that answer without credentials, each with 200 (orchestration probes, the scrape, the review page)
OPEN_PATHS = ["/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics", "/ui",
              "/ui/config"]
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


def add_key(path: Path, name: str, scopes: str) -> str:
    """``cxr-keys add`` as an operator runs it; the key is the last line of its output."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keys_main(["add", name, "--scopes", scopes, "--file", str(path)]) == 0
    return out.getvalue().strip().splitlines()[-1]


