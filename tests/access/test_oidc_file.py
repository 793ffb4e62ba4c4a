"""A JWKS kept in a file (CXR_OIDC_JWKS=/path): verified against it, re-read when it changes (rotation)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from access_helpers import AUDIENCE, ISSUER, IdentityProvider

from app.access.oidc import OidcVerifier
from app.errors import UnauthorizedError


def test_jwks_file_and_rotation(tmp_path: Path) -> None:
    idp = IdentityProvider()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    verifier = OidcVerifier(str(path), issuer=ISSUER, audience=AUDIENCE)
    caller = verifier.verify(idp.token(scope="openid cxr:predict cxr:monitor cxr:unknown other"))
    assert (caller.name, caller.scopes, caller.kind) == ("ris-service-account", {"predict", "monitor"}, "token")
    assert verifier.verify(idp.token(sub=None, client_id="pacs-bridge", scope="")).name == "pacs-bridge"
    idp.add_key("ec-2", curve=True)
    with pytest.raises(UnauthorizedError, match="not in the identity provider's JWKS"):
        verifier.verify(idp.token("ec-2"))
    path.write_text(json.dumps(idp.jwks()) + "\n")
    assert verifier.verify(idp.token("ec-2")).scopes == {"predict"}
    with pytest.raises(UnauthorizedError, match="names the caller"):
        verifier.verify(idp.token(sub=None))


def test_verified_tokens_are_reused_until_they_expire(tmp_path: Path) -> None:
    idp = IdentityProvider()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    verifier = OidcVerifier(str(path), issuer=ISSUER, audience=AUDIENCE)
    now = int(time.time())
    token = idp.token(exp=now + 2)
    assert verifier.cached(token) is None
    caller = verifier.verify(token)
    assert verifier.cached(token) == caller
    assert verifier.cached(idp.token(exp=now + 2, sub="someone-else")) is None
    time.sleep(max(0.0, now + 2 - time.time()) + 0.05)
    assert verifier.cached(token) is None, "an expired token is checked again (and refused past the leeway)"
