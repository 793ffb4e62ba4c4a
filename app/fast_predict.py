"""``POST /predict``'s common case, served without FastAPI's per-request machinery; every other case goes to the
FastAPI route unchanged.

Under load the event loop's Python is what limits the service (benchmarks/README.md, issue 23). For a
``/predict`` FastAPI walks the routes, solves the route's dependencies, validates each parameter, parses the
multipart body into spooled ``UploadFile`` objects and validates the file field: more than half of the loop's
own work per request (benchmarks/asgi_cost.py: 370 against 169 CPU-us). The one shape nearly every caller
sends is

- one multipart part named ``file`` with a file name,
- no query string, or only the route's own parameters, values FastAPI accepts,
- an ``Accept`` that gets JSON.

For that shape this middleware takes the same steps directly: the route's access check, its audit ticket, the
data plane call and the route's own response model to serialise the answer. Its answer is the route's, byte for
byte (tests/app/test_fast_predict.py).

Anything else goes to the FastAPI route with the body replayed: another media type, another part, a query
FastAPI would refuse, a body that does not parse, a client that goes away. The hand-over happens before anything
with a side effect (the rate limit, the audit): the route stays the one definition of every refusal.
``CXR_FAST_PREDICT=false`` sends every request to the route (for comparing; nothing else changes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute, serialize_response
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response

from app.access.caller import PREDICT
from app.errors import NotAcceptableError
from app.renderers import JSON, negotiate
from app.routes import ROUTERS
from app.routes import predict as predict_routes
from app.routes.predict import checked_upload
from app.security import check_scope, require_predict

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


def single_file_part(content_type: str | None, body: bytes) -> bytes | None:
    """The data of the body's one part, if the body is exactly one well-formed multipart part named ``file`` with
    a non-empty file name (what Starlette's parser would hand the route as ``file``); None for any other body.

    python-multipart's own parser does the parsing, as it does for Starlette; only the shape check is ours."""
    if content_type is None:
        return None
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    # a charset parameter changes how Starlette decodes the field name: left to the route
    if kind != b"multipart/form-data" or not boundary or b"charset" in params:
        return None
    parts: list[tuple[list[bytes], list[bytes]]] = []  # (content-disposition values, data chunks)
    header: list[bytes] = [b"", b""]
    ended = False

    def on_part_begin() -> None:
        parts.append(([], []))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        if header[0].lower() == b"content-disposition":
            parts[-1][0].append(header[1])
        header[0] = header[1] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].append(data[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_end": on_end})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError:
        return None
    if not ended or len(parts) != 1 or len(parts[0][0]) != 1:
        return None
    _, options = parse_options_header(parts[0][0][0])
    if options.get(b"name") != b"file" or not options.get(b"filename"):
        return None
    return b"".join(parts[0][1])


class FastPredict:
    """ASGI middleware, the innermost one (inside the body limit, so an oversized body is refused while it
    streams, as for the route)."""

    def __init__(self, app: Callable[..., Any], *, fastapi_app: FastAPI) -> None:
        self.app = app
        self.state = fastapi_app.state
        self.route = next(r for r in predict_routes.router.routes
                          if isinstance(r, APIRoute) and r.path == "/predict" and "POST" in r.methods)
        dependants = list(_tree(self.route.dependant))
        router_dependencies = next(d for router, d in ROUTERS if router is predict_routes.router)
        # what this path does not check, the route must not need: a guard against a parameter added later
        if [d.dependency for d in router_dependencies] != [require_predict] or \
                any(d.header_params or d.cookie_params or d.path_params for d in dependants) or \
                [f.name for d in dependants for f in d.query_params] != ["explain", "operating_point"]:
            raise RuntimeError("POST /predict's parameters changed: update app/fast_predict.py to match")
        self.query_fields = self.route.dependant.query_params
        handlers = {kind: handler for kind, handler in fastapi_app.exception_handlers.items()
                    if kind not in (500, Exception)}  # as Starlette splits them: those two end further out
        self.handled = ExceptionMiddleware(self._serve, handlers=handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/predict" \
                and not scope.get("root_path") and self.state.settings.fast_predict:
            await self.handled(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:  # the body limit's receive raises UploadTooLargeError past the limit, as in the route
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: the route's way of ending
                await self.app(scope, _replay(messages, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = Request(scope, receive)
        data = single_file_part(request.headers.get("content-type"), b"".join(chunks))
        query = self._query(request)
        if data is None or query is None or not _answers_json(request.headers.get("accept")):
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"], scope["endpoint"], scope["path_params"] = self.route, self.route.endpoint, {}
        await check_scope(request, PREDICT)  # the route's dependency: 401 / 403 / 429
        state = self.state
        request_id: str = scope["state"]["request_id"]
        async with state.audit.track_request(request, request_id) as ticket:
            checked_upload(data, state.settings)
            prediction = await state.dataplane.predict_image(data, ticket=ticket, explain=query["explain"],
                                                             operating_point=query["operating_point"])
            content = prediction.as_dict(request_id)
        route = self.route
        body = await serialize_response(
            field=route.response_field, response_content=content, include=route.response_model_include,
            exclude=route.response_model_exclude, by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset,
            exclude_defaults=route.response_model_exclude_defaults,
            exclude_none=route.response_model_exclude_none, dump_json=True)
        await Response(body, media_type="application/json")(scope, receive, send)

    def _query(self, request: Request) -> dict[str, Any] | None:
        """The route's query parameters as FastAPI would validate them; None where it would refuse them."""
        if not request.scope.get("query_string"):
            return {"explain": False, "operating_point": None}
        values, errors = request_params_to_args(self.query_fields, request.query_params)
        return None if errors else values


def _tree(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _tree(sub)


def _answers_json(accept: str | None) -> bool:
    try:
        return negotiate(accept) == JSON
    except NotAcceptableError:  # the route refuses it (audited)
        return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives the messages already read, then the server's."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
