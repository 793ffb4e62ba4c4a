"""Pure ASGI middleware (no per-request task overhead): request ids, access metrics, body-size limit."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from app.errors import UploadTooLargeError, count_error, error_response
from app.inflight import InFlight
from app.metrics import Metrics

log = logging.getLogger("cxr.access")
error_log = logging.getLogger("cxr.errors")

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Gives every request an id (the client's X-Request-ID if sane), echoes it, counts it in flight, records
    metrics, writes the access log, and is where an unexpected exception ends: logged once with the request id
    and answered with the JSON 500 body (no stack trace), instead of escaping to the server's default handler."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False,
                 inflight: InFlight | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.inflight = inflight or InFlight(None)  # the data plane's: a lone request may skip hand-offs

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            with self.inflight.request():
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            error_log.error("request %s failed: unhandled %s", request_id, type(exc).__name__, exc_info=exc)
            count_error(scope, "internal_error")
            if not response_started:  # otherwise the server closes the half-sent response
                response = error_response(500, "internal_error", "internal server error; the request id "
                                          "identifies it in the server log", request_id)
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template, scope["method"]).observe(elapsed)
            if self.access_log:
                log.info("%s %s %s %d %.1fms", request_id, scope["method"], scope["path"], status, elapsed * 1000)


class BodyLimitMiddleware:
    """Refuses request bodies over the limit while they stream in: by Content-Length up front, else by
    counting chunks, so an oversized upload is never held in memory whole."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _header(scope, b"content-length")
        too_large = UploadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # answer before reading a byte of the body
            request_id = scope.get("state", {}).get("request_id", "")
            log.info("request %s rejected: 413 declared body %s > %d", request_id, declared, limit)
            count_error(scope, too_large.code)
            response = error_response(413, too_large.code, too_large.message, request_id)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)
