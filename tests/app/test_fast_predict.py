"""POST /predict's fast path (app/fast_predict.py) against the FastAPI route it stands in for, over real HTTP.

The same server answers each request twice: once with ``fast_predict`` on and once off (the route), each under
a request id of the same length. The two answers must have the same status, content type and body bytes, for
answers and for every kind of refusal. Only the request id and the measured ``timing_ms`` values may differ.

A spy on the fast path's access check tells which of the two answered. That proves the common shapes take the
fast path and the others reach the route. Either way each answer is audited exactly once and counted under the
route's metrics label.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, MiB, Running, serve
from hypothesis import given, settings
from hypothesis import strategies as st
from image_factory import encode
from sqlalchemy import select
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app import fast_predict
from app.audit.models import AuditRecord
from app.fast_predict import single_file_part
from app.settings import Settings

KEY = "fast-path-test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
BOUNDARY = "fastpathtestboundary42"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SKIP = {"timing_ms", "overlay_png"}  # an explanation's measured time and its images


@pytest.fixture(scope="module")
def server(shipped_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("fast-predict")
    with serve(Settings(**SERVER_SETTINGS, api_keys=[KEY], audit_path=folder / "audit.db")) as running:
        yield running


@pytest.fixture(scope="module")
def film(xray_224_dir: Path) -> bytes:
    return sorted((xray_224_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0].read_bytes()


@pytest.fixture
def fast_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per request that reached the fast path's access check (the route has its own)."""
    calls: list[int] = []
    original = fast_predict.check_scope

    async def spy(request, scope):  # type: ignore[no-untyped-def]
        calls.append(1)
        return await original(request, scope)

    monkeypatch.setattr(fast_predict, "check_scope", spy)
    return calls


def part(name: str, data: bytes, filename: str | None = "x.jpeg") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
        + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def both_ways(server: Running, query: str = "", headers: dict[str, str] | None = None,
              **request: object) -> tuple[httpx.Response, httpx.Response, tuple[str, str]]:
    """The request sent with the fast path on, then off (each under its own request id of one length):
    the two answers and their ids."""
    settings_ = server.app.state.settings
    ids = ("fast-" + uuid.uuid4().hex, "slow-" + uuid.uuid4().hex)
    answers = []
    for fast, request_id in zip((True, False), ids, strict=True):
        settings_.fast_predict = fast
        try:
            sent = {k: v() if callable(v) else v for k, v in request.items()}  # a fresh stream each time
            answers.append(server.client.post("/predict" + query, headers={
                **(headers or {}), "X-Request-ID": request_id}, **sent))  # type: ignore[arg-type]
        finally:
            settings_.fast_predict = True
    return answers[0], answers[1], ids


def masked(response: httpx.Response, request_id: str) -> bytes:
    """The body with its request id taken out and timing_ms's measured values blanked (keys kept)."""
    content = response.content.replace(request_id.encode(), b"<id>")
    return re.sub(rb'("timing_ms":\{)([^}]*)(\})', lambda m: m[1] + re.sub(rb"-?[0-9.eE+-]+", b"#", m[2]) + m[3],
                  content)


def assert_same(fast: httpx.Response, route: httpx.Response, ids: tuple[str, str]) -> None:
    assert fast.status_code == route.status_code, (fast.text, route.text)
    for header in ("content-type", "retry-after", "www-authenticate", "allow"):
        assert fast.headers.get(header) == route.headers.get(header), header
    assert (fast.headers["x-request-id"], route.headers["x-request-id"]) == ids
    assert masked(fast, ids[0]) == masked(route, ids[1])


def audit_rows(server: Running, ids: tuple[str, str]) -> dict[str, list[dict]]:
    audit = server.app.state.audit
    assert audit.writer.flush(30)
    with audit.engine.connect() as connection:
        found = [dict(r) for r in connection.execute(
            select(AuditRecord).where(AuditRecord.request_id.in_(list(ids)))).mappings()]
    return {request_id: [r for r in found if r["request_id"] == request_id] for request_id in ids}


def predict_requests(server: Running) -> float:
    """The service's own count of POST /predict requests answered (any status), under the route's label."""
    return sum(sample.value for family in server.app.state.metrics.requests.collect() for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("route") == "/predict")


def test_common_requests_take_the_fast_path_and_answer_as_the_route(server, film, fast_checks):
    points = server.client.get("/models", headers=AUTH).json()
    names = re.findall(r'"(screening|balanced)"', json.dumps(points))
    queries = ["", "?explain=false", "?unrelated=x&explain=no", "?explain=no&explain=0"] + \
        [f"?operating_point={name}" for name in sorted(set(names))]
    accepts = [None, "application/json", "*/*", "application/json, text/plain;q=0.5"]
    cases = [(q, None) for q in queries] + [("", a) for a in accepts[1:]]
    for query, accept in cases:
        before = len(fast_checks)
        fast, route, ids = both_ways(server, query, {**AUTH, **({"Accept": accept} if accept else {})},
                                     files={"file": ("film.jpeg", film, "image/jpeg")})
        assert fast.status_code == 200, fast.text
        assert_same(fast, route, ids)
        assert len(fast_checks) == before + 1, f"{query!r} {accept!r} did not take the fast path"
        answer = fast.json()
        assert answer["request_id"] == ids[0] and set(answer["probabilities"]) == {"NORMAL", "PNEUMONIA"}
    # with a Grad-CAM map: its floating-point sums differ in the last digits from one call to the next, route
    # or not, so the map is compared by its values to a tolerance and everything else exactly
    before = len(fast_checks)
    fast, route, ids = both_ways(server, "?explain=1", AUTH, files={"file": ("film.jpeg", film, "image/jpeg")})
    assert fast.status_code == route.status_code == 200 and len(fast_checks) == before + 1
    explained = [r.json() for r in (fast, route)]
    maps = [answer.pop("explanation") for answer in explained]
    assert np.allclose(maps[0].pop("grid"), maps[1].pop("grid"), atol=0.02)
    assert {k: v for k, v in maps[0].items() if k not in SKIP} == {k: v for k, v in maps[1].items() if k not in SKIP}
    for answer, request_id in zip(explained, ids, strict=True):
        assert answer.pop("request_id") == request_id and answer.pop("timing_ms")
    assert explained[0] == explained[1]
    # a hand-made body in several chunks (as uvicorn hands it over) takes the fast path too
    before = len(fast_checks)
    chunks = body(part("file", film))
    fast, route, ids = both_ways(server, "", {**AUTH, "Content-Type": MULTIPART},
                                 content=lambda: iter([chunks[i:i + 1000] for i in range(0, len(chunks), 1000)]))
    assert fast.status_code == 200 and len(fast_checks) == before + 1
    assert_same(fast, route, ids)


def test_refusals_on_the_fast_path_are_the_routes(server, film, fast_checks, gate_dir):
    tiff_header = b"II*\x00" + bytes(60)
    cases = {
        "no credentials": ({}, film),
        "a wrong key": ({"X-API-Key": "not-a-key"}, film),
        "an empty file": (AUTH, b""),
        "over the per-file limit": (AUTH, film + bytes(SERVER_SETTINGS["max_upload_bytes"])),
        "not an image": (AUTH, b"this is not an image" * 10),
        "a damaged TIFF": (AUTH, tiff_header),
        "not a radiograph (a colour fundus photo)": (
            AUTH, sorted((gate_dir / "not_cxr" / "fundus").glob("*.png"))[0].read_bytes()),
        "a tiny image": (AUTH, encode(np.full((8, 8), 128, np.uint8), "PNG")),
    }
    for name, (headers, data) in cases.items():
        before = len(fast_checks)
        fast, route, ids = both_ways(server, "", headers, files={"file": ("x.jpeg", data, "image/jpeg")})
        assert 400 <= fast.status_code < 500, (name, fast.text)
        assert_same(fast, route, ids)
        assert len(fast_checks) == before + 1, f"{name}: did not take the fast path"
    fast, route, ids = both_ways(server, "?operating_point=nonesuch", AUTH,
                                 files={"file": ("x.jpeg", film, "image/jpeg")})
    assert fast.status_code == 422 and "nonesuch" in fast.json()["error"]["message"]
    assert_same(fast, route, ids)


def test_other_shapes_go_to_the_route_unchanged(server, film, fast_checks):
    raw = {**AUTH, "Content-Type": MULTIPART}
    cases: dict[str, tuple[str, dict[str, str], dict[str, object]]] = {
        "two files named file": ("", raw, {"content": body(part("file", film), part("file", film))}),
        "a second field": ("", raw, {"content": body(part("file", film), part("note", b"hi", None))}),
        "file as a plain field": ("", raw, {"content": body(part("file", film, None))}),
        "an empty file name": ("", raw, {"content": body(part("file", film, ""))}),
        "another field name": ("", raw, {"content": body(part("image", film))}),
        "no closing boundary": ("", raw, {"content": part("file", film)}),
        "garbage": ("", raw, {"content": b"\x00\x01 not multipart at all"}),
        "no boundary": ("", {**AUTH, "Content-Type": "multipart/form-data"}, {"content": body(part("file", film))}),
        "a charset": ("", {**AUTH, "Content-Type": MULTIPART + "; charset=utf-16"},
                      {"content": body(part("file", film))}),
        "raw bytes": ("", {**AUTH, "Content-Type": "image/jpeg"}, {"content": film}),
        "an explain FastAPI refuses": ("?explain=maybe", AUTH, {"files": {"file": ("x.jpeg", film)}}),
        "an operating point too long": ("?operating_point=" + "x" * 65, AUTH, {"files": {"file": ("x.jpeg", film)}}),
        "an Accept nothing matches": ("", {**AUTH, "Accept": "text/html"}, {"files": {"file": ("x.jpeg", film)}}),
        "FHIR": ("", {**AUTH, "Accept": "application/fhir+json"}, {"files": {"file": ("x.jpeg", film)}}),
        "a DICOM SR for a JPEG": ("", {**AUTH, "Accept": "application/dicom"}, {"files": {"file": ("x.jpeg", film)}}),
        "no credentials and a bad body": ("", {"Content-Type": MULTIPART}, {"content": b"--" + b"x" * 50}),
    }
    for name, (query, headers, request) in cases.items():
        before = len(fast_checks)
        fast, route, ids = both_ways(server, query, headers, **request)
        assert len(fast_checks) == before, f"{name}: took the fast path"
        if name == "FHIR":
            assert fast.status_code == 200 and fast.json()["resourceType"] == "DiagnosticReport"
            assert fast.headers["content-type"] == route.headers["content-type"]
            continue  # its body carries the time of issue: compared by status and media type
        assert_same(fast, route, ids)


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server, fast_checks):
    limit = SERVER_SETTINGS["max_upload_bytes"] + 64 * 1024

    def chunks() -> Iterator[bytes]:
        yield part("file", b"")[:-2]
        for _ in range(limit // MiB + 2):
            yield bytes(MiB)

    fast, route, ids = both_ways(server, "", {**AUTH, "Content-Type": MULTIPART}, content=chunks)
    assert fast.status_code == 413 and fast.json()["error"]["code"] == "upload_too_large"
    assert_same(fast, route, ids)


def test_each_answer_is_audited_once_and_counted_under_the_route(server, film):
    for data, status in ((film, 200), (b"", 400)):
        counted = predict_requests(server)
        fast, route, ids = both_ways(server, "", AUTH, files={"file": ("x.jpeg", data, "image/jpeg")})
        assert fast.status_code == route.status_code == status, fast.text
        assert predict_requests(server) == counted + 2
        rows = audit_rows(server, ids)
        assert [len(rows[i]) for i in ids] == [1, 1]
        skip = {"id", "request_id", "created_at", "timings"}
        assert {k: v for k, v in rows[ids[0]][0].items() if k not in skip} == \
            {k: v for k, v in rows[ids[1]][0].items() if k not in skip}
        assert rows[ids[0]][0]["route"] == "/predict" and rows[ids[0]][0]["status"] == status


def starlette_items(content_type: str, data: bytes) -> list[tuple[str, object]] | None:
    """What Starlette's own parser makes of a body (the route's view); None where it refuses the body."""
    import asyncio

    async def stream() -> Iterator[bytes]:  # type: ignore[misc]
        yield data

    async def parse() -> list[tuple[str, object]]:
        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        items = []
        for key, value in form.multi_items():
            items.append((key, (value.filename, await value.read()) if isinstance(value, UploadFile) else value))
        return items

    try:
        return asyncio.run(parse())
    except MultiPartException:
        return None


SEGMENTS = st.sampled_from([
    f"--{BOUNDARY}\r\n", f"--{BOUNDARY}--\r\n", 'Content-Disposition: form-data; name="file"; filename="a.png"\r\n',
    'Content-Disposition: form-data; name="file"\r\n', 'content-disposition: form-data; name="other"\r\n',
    'Content-Disposition: form-data; name="file"; filename=""\r\n', "Content-Type: image/png\r\n", "\r\n",
    "payload bytes", "\r\n--", BOUNDARY, "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENTS, max_size=14))
def test_the_fast_parser_accepts_only_what_starlette_reads_as_one_file(segments):
    """Whenever the fast path takes a body, Starlette's parser (the route's) reads exactly one file part named
    'file' from it, with a file name and the same bytes."""
    data = "".join(segments).encode()
    taken = single_file_part(MULTIPART, data)
    if taken is not None:
        items = starlette_items(MULTIPART, data)
        assert items is not None and len(items) == 1
        name, (filename, content) = items[0]  # type: ignore[misc]
        assert name == "file" and filename and content == taken


def test_the_fast_parser_takes_the_common_body():
    assert single_file_part(MULTIPART, body(part("file", b"\x89PNG data"))) == b"\x89PNG data"
    assert single_file_part("multipart/form-data; boundary=\"" + BOUNDARY + "\"",
                            body(part("file", b"abc"))) == b"abc"
    assert single_file_part(None, body(part("file", b"abc"))) is None
    assert single_file_part("application/x-www-form-urlencoded", b"file=abc") is None
