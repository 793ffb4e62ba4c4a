"""Optional API keys: when ``CXR_API_KEYS`` is set, protected routes need ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import UnauthorizedError


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def key_matches(candidate: str, keys: list[str]) -> bool:
    """Compare against every configured key (no early exit), each in constant time."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


async def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    candidate = presented_key(request)
    if candidate is None:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    if not key_matches(candidate, keys):
        raise UnauthorizedError("invalid API key")
