"""Access control as FastAPI dependencies: each protected route needs one scope (``predict``, ``feedback``,
``monitor``, ``admin``). 401 without valid credentials, 403 with valid ones that lack the scope; both name what
is missing. Credentials: ``Authorization: Bearer <API key or sign-on token>`` or ``X-API-Key: <API key>``;
they are never logged, and the caller's name (never the credential) goes to ``request.state.caller``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

from fastapi import Request

from app.access.caller import ADMIN, FEEDBACK, MONITOR, PREDICT, Caller
from app.access.control import AccessControl
from app.errors import ForbiddenError

log = logging.getLogger("cxr.access")


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


def access_of(request: Request) -> AccessControl:
    """The app's access control (built from its settings on first use where create_app did not)."""
    state = request.app.state
    access = getattr(state, "access", None)
    if access is None:
        access = state.access = AccessControl(state.settings)
    return access


async def authenticate(request: Request) -> Caller:
    """The request's caller, established once per request; raises UnauthorizedError (401)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is not None:
        return caller
    access = access_of(request)
    credential = presented_key(request)
    caller = access.authenticate_key(credential)
    if caller is None:  # a sign-on token: a JWKS fetch may block, so off the event loop unless seen before
        assert credential is not None
        caller = access.cached_token(credential) or await asyncio.to_thread(access.verify_token, credential)
    request.state.caller = caller
    if access.limiter is not None:
        access.limiter.check(_bucket_of(request, caller))
    return caller


def _bucket_of(request: Request, caller: Caller) -> str:
    """Rate-limit bucket: the caller's name; without access control, the client address."""
    if caller.kind != "open":
        return f"{caller.kind}:{caller.name}"
    return f"open:{request.client.host}" if request.client else "open"


async def check_scope(request: Request, scope: str) -> Caller:
    """For any code that needs a scope: the caller, or UnauthorizedError (401) / ForbiddenError (403)."""
    caller = await authenticate(request)
    if scope not in caller.scopes:
        raise ForbiddenError(f"caller {caller.name!r} lacks the '{scope}' scope this route needs "
                             f"(API key: cxr-keys add ... --scopes {scope}; sign-on token: cxr:{scope})", scope=scope)
    return caller


def require_scope(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency (``Depends(require_scope("admin"))``) that lets only callers holding ``scope`` through."""

    async def dependency(request: Request) -> None:
        await check_scope(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


require_predict = require_scope(PREDICT)
require_feedback = require_scope(FEEDBACK)
require_monitor = require_scope(MONITOR)
require_admin = require_scope(ADMIN)
require_api_key = require_predict  # the name routes used before scopes: a prediction route's dependency


async def require_metrics_access(request: Request) -> None:
    """/metrics stays open for scrapers unless CXR_PROTECT_METRICS=true, then it needs the monitor scope."""
    if access_of(request).protect_metrics:
        await check_scope(request, MONITOR)
