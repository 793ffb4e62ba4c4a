"""The one place where every answer and every refusal becomes exactly one audit row.

Per image: the transport wraps its work in ``async with audit.track(ticket)``: leaving it normally records the
answer (the data plane put the prediction on the ticket), leaving it by an exception records the refusal with
the status and code the error table maps that exception to. Per request: an error answered before any image
was looked at (missing key, bad form, too many files, body over the limit) reaches ``refused_request`` from
the error handlers, which records it unless an image of that request was already recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from types import TracebackType
from typing import Any, Protocol

from starlette.requests import Request

from app.audit.ticket import Ticket, answer_row, refusal_row
from app.audit.writer import AuditWriter, RecordNotStored
from app.errors import AuditUnavailableError, classify
from app.security import key_matches, presented_key

log = logging.getLogger("cxr.audit")

RECORDED = "audit_recorded"  # request state flag: an answer or refusal of this request is recorded
CLIENT_CLOSED = (499, "client_closed_request")


def audited_path(method: str, path: str) -> bool:
    """Requests that ask for a prediction: their answers and refusals are audited."""
    if method != "POST":
        return False
    return path in ("/predict", "/predict/batch") or (path.startswith("/v2/models/") and path.endswith("/infer"))


class Labeller(Protocol):
    def label_of(self, credential: str | None) -> str: ...


class ClientLabels:
    """The client of a request as a label: the API key's name, never the key. Flat CXR_API_KEYS keys carry no
    names, so each is named ``key-<first 8 hex digits of its sha256>``: stable, and it cannot be turned back
    into the key. (With an ``AccessControl`` the hook asks it instead: key-file keys have names.)"""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self._labels = {key: "key-" + hashlib.sha256(key.encode()).hexdigest()[:8] for key in keys}

    def label_of(self, headers_key: str | None) -> str:
        if not self.keys:
            return "anonymous"
        if headers_key is None:
            return "no-key"
        if key_matches(headers_key, self.keys):
            return self._labels[headers_key]
        return "invalid-key"


class Tracked:
    """``async with hook.track(ticket)``: records the ticket exactly once, however the block ends."""

    __slots__ = ("hook", "state", "ticket")

    def __init__(self, hook: AuditHook, ticket: Ticket, state: dict[str, Any] | None) -> None:
        self.hook, self.ticket, self.state = hook, ticket, state

    async def __aenter__(self) -> Ticket:
        try:
            self.hook.check_open()
        except AuditUnavailableError as exc:
            self._record_refusal(exc)
            raise
        return self.ticket

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None and self.ticket.prediction is not None:
            self._mark()
            if self.hook.durable:
                await self.hook.committed(answer_row(self.ticket))  # hashed first where deferred
            elif self.ticket.unhashed is not None:
                # the answer leaves before its row is made (and its upload hashed): the callback runs when this
                # request's task next yields, which for a lone answer is once it has been written to the socket
                self.ticket.ended = time.perf_counter()
                self.hook.writer.reserve()  # a flush from now on waits for this row
                asyncio.get_running_loop().call_soon(self._enqueue_answer)
            else:
                self.hook.writer.enqueue(answer_row(self.ticket))
        elif exc is None:  # the block ended without a prediction: a transport bug, still recorded
            log.error("audit: request %s ended without a prediction", self.ticket.request_id)
            self._mark()
            self.hook.writer.enqueue(refusal_row(self.ticket, 500, "no_result"))
        else:
            self._record_refusal(exc)

    def _enqueue_answer(self) -> None:
        try:
            row = answer_row(self.ticket)
        except Exception:  # a loop callback: nothing above it would log this
            log.exception("audit: the record of request %s could not be made", self.ticket.request_id)
            self.hook.writer.abandon("error")
            return
        self.hook.writer.enqueue(row, reserved=True)

    def _record_refusal(self, exc: BaseException) -> None:
        self._mark()
        if isinstance(exc, asyncio.CancelledError):
            status, code = CLIENT_CLOSED
        elif isinstance(exc, Exception):
            status, code, _ = classify(exc)
        else:
            status, code = 500, "internal_error"
        self.hook.writer.enqueue(refusal_row(self.ticket, status, code, exc))

    def _mark(self) -> None:
        if self.state is not None:
            self.state[RECORDED] = True


class AuditHook:
    def __init__(self, writer: AuditWriter, *, keys: list[str], salt: str | None, required: bool,
                 durable: bool = False, commit_timeout_s: float = 10.0, labels: Labeller | None = None) -> None:
        self.writer = writer
        self.clients: Labeller = labels if labels is not None else ClientLabels(keys)
        self.salt = salt
        self.required = required
        self.durable = durable
        self.commit_timeout_s = commit_timeout_s

    async def committed(self, row: dict[str, Any]) -> None:
        """Durable mode: returns once the answer's record is committed; otherwise the answer is refused (503)
        and, where the writer has not taken the row yet, the row is withdrawn (no record of an unsent answer)."""
        waiter = self.writer.commit(row)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(waiter)), self.commit_timeout_s)
            return
        except TimeoutError:
            if not waiter.cancel():  # the writer is committing it right now: its outcome decides
                try:
                    await asyncio.wait_for(asyncio.wrap_future(waiter), self.commit_timeout_s)
                    return
                except Exception:  # still not committed: refused below
                    pass
            reason = "timed out"
        except RecordNotStored as exc:
            reason = f"not stored ({exc})"
        log.error("audit: the record of request %s was %s; the answer is refused", row.get("request_id"), reason)
        raise AuditUnavailableError("the audit record of this answer could not be committed; retry later",
                                    retry_after=5)

    def check_open(self) -> None:
        """Fail-closed mode: no answer that cannot be audited."""
        if self.required and not self.writer.store_up:
            raise AuditUnavailableError("the audit store is unreachable and CXR_AUDIT_REQUIRED=true",
                                        retry_after=5)

    def ticket(self, scope: dict[str, Any], request_id: str, client_key: str | None) -> Ticket:
        route = getattr(scope.get("route"), "path", None) or scope.get("path", "")
        return Ticket(request_id=request_id, route=route, client=self.clients.label_of(client_key), salt=self.salt)

    def http_ticket(self, scope: dict[str, Any], request_id: str) -> Ticket:
        """The caller that access control established (app.security) names the client; a request refused
        before that (no or a wrong credential, a body over the limit) is labelled from its headers."""
        route = getattr(scope.get("route"), "path", None) or scope.get("path", "")
        caller = scope.get("state", {}).get("caller")
        if caller is not None:
            return Ticket(request_id=request_id, route=route, client=caller.name[:64], salt=self.salt,
                          caller=caller.identity)
        return self.ticket(scope, request_id, presented_key(Request(scope)))

    def track_request(self, request: Any, item_id: str) -> Tracked:
        """For an HTTP request (a Starlette ``Request``): the ticket of one image, tracked."""
        ticket = self.http_ticket(request.scope, item_id)
        return Tracked(self, ticket, request.scope.setdefault("state", {}))

    def track(self, ticket: Ticket, state: dict[str, Any] | None = None) -> Tracked:
        """For other transports (e.g. a DICOM node): a ticket made by ``ticket()``, tracked."""
        return Tracked(self, ticket, state)

    def refused_request(self, scope: dict[str, Any], status: int, code: str) -> None:
        """A request-level refusal (from the error handlers); ignored for other routes and when one of the
        request's images is already recorded."""
        if scope.get("type") != "http" or not audited_path(scope.get("method", ""), scope.get("path", "")):
            return
        state = scope.setdefault("state", {})
        if state.get(RECORDED):
            return
        state[RECORDED] = True
        ticket = self.http_ticket(scope, str(state.get("request_id", "")))
        self.writer.enqueue(refusal_row(ticket, status, code))
