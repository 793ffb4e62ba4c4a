"""Hospital sign-on tokens: ``Authorization: Bearer <JWT>`` issued by the hospital's OpenID Connect provider,
checked with PyJWT against its JWKS (a URL, fetched and cached by ``jwt.PyJWKClient``, which fetches again
when a token names a ``kid`` it has not seen: key rotation; or a file, re-read when it changes).

Only asymmetric algorithms are accepted, so neither ``alg: none`` nor an HS256 token "signed" with the public
key can pass; ``exp``, ``iss`` and ``aud`` are required and checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from app.access.caller import SCOPES, TOKEN_PREFIX, Caller
from app.errors import ServiceError, UnauthorizedError

log = logging.getLogger("cxr.access")

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
ASYMMETRIC_KEY_TYPES = ("RSA", "EC", "OKP")
LEEWAY_S = 30  # clock skew tolerated between the provider and this service
JWKS_CACHE_S = 300
VERIFIED_CACHE = 4096  # tokens whose signature was checked: reused until they expire (a signature costs ~0.1 ms)


class AuthUnavailableError(ServiceError):
    """The identity provider's keys cannot be fetched: retry later (not the caller's fault)."""

    code, status = "auth_unavailable", 503


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


class _JwksFile:
    """A JWKS kept in a file (e.g. a mounted Secret or ConfigMap), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        stat = os.stat(self.path)
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature != self._signature:
            keys = jwt.PyJWKSet.from_json(self.path.read_text(encoding="utf-8")).keys
            self._keys = {key.key_id: key for key in keys}
            self._signature = signature
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise jwt.PyJWKClientError(f"no key with kid {kid!r} in the JWKS")


class OidcVerifier:
    def __init__(self, jwks: str, *, issuer: str, audience: str, roles_claim: str | None = None,
                 cooldown_s: float = 30.0) -> None:
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim
        self.remote = jwks.startswith(("https://", "http://"))
        self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=JWKS_CACHE_S, timeout=10,
                                       cooldown_duration=cooldown_s) if self.remote else None
        self._file = None if self.remote else _JwksFile(Path(jwks))
        # sha256(token) -> (caller, exp): a verified token stays valid until its exp, so re-checking its signature
        # on every request buys nothing
        self._verified: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()

    def cached(self, token: str) -> Caller | None:
        """The caller of a token verified before and not yet expired; None otherwise (then ``verify``)."""
        found = self._verified.get(hashlib.sha256(token.encode()).digest())
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    def _signing_key(self, token: str, header: dict[str, Any]) -> jwt.PyJWK:
        try:
            if self._client is not None:
                key = self._client.get_signing_key_from_jwt(token)
            else:
                assert self._file is not None
                key = self._file.key_for(header.get("kid"))
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("access: the identity provider's JWKS cannot be fetched: %s", type(exc).__name__)
            raise AuthUnavailableError("the identity provider's keys cannot be fetched; retry later",
                                       retry_after=5) from None
        except (jwt.PyJWKClientError, jwt.PyJWKError, OSError, ValueError) as exc:
            raise UnauthorizedError(f"invalid token: its signing key is not in the identity provider's JWKS "
                                    f"({type(exc).__name__})") from None
        if key.key_type not in ASYMMETRIC_KEY_TYPES:  # a symmetric ("oct") key published by mistake
            raise UnauthorizedError("invalid token: only asymmetric signing keys are accepted")
        return key

    def verify(self, token: str) -> Caller:
        """Blocking on a JWKS fetch (run it in a thread). Raises UnauthorizedError saying what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise UnauthorizedError("invalid token: not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise UnauthorizedError(f"invalid token: algorithm {str(algorithm)[:16]!r} is not accepted; "
                                    f"use one of {', '.join(ALGORITHMS)}")
        key = self._signing_key(token, header)
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("invalid token: expired") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("invalid token: not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError(f"invalid token: wrong audience (expected {self.audience})") from None
        except jwt.InvalidIssuerError:
            raise UnauthorizedError(f"invalid token: wrong issuer (expected {self.issuer})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthorizedError(f"invalid token: no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"invalid token: {type(exc).__name__}") from None
        name = claims.get("sub") or claims.get("client_id") or claims.get("azp")
        if not isinstance(name, str) or not name:
            raise UnauthorizedError("invalid token: no 'sub', 'client_id' or 'azp' claim names the caller")
        caller = Caller(name[:128], self.scopes_of(claims), "token")
        self._remember(token, caller, float(claims["exp"]))
        return caller

    def _remember(self, token: str, caller: Caller, expires: float) -> None:
        self._verified[hashlib.sha256(token.encode()).digest()] = (caller, expires)
        while len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)

    def scopes_of(self, claims: dict[str, Any]) -> frozenset[str]:
        """``cxr:<scope>`` entries of ``scope`` (space-separated), ``scp`` (list or string) and the roles claim
        (a dotted path, e.g. Keycloak's realm_access.roles)."""
        granted: list[str] = []
        for value in (claims.get("scope"), claims.get("scp"), self._roles(claims)):
            granted.extend(_strings(value))
        return frozenset(item.removeprefix(TOKEN_PREFIX) for item in granted
                         if item.startswith(TOKEN_PREFIX) and item.removeprefix(TOKEN_PREFIX) in SCOPES)

    def _roles(self, claims: dict[str, Any]) -> Any:
        if not self.roles_claim:
            return None
        value: Any = claims
        for part in self.roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return ()
