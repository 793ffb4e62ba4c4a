"""The lone-request path through the real app. In a worker with one core's share (one decode thread), a lone
JPEG is prepared and run on the event loop (no hop to a decode thread and back), with the same metrics; a large
upload or a PNG goes to the decode thread, which runs the model itself when the batcher is idle; so does any
upload in a worker with several decode threads. When no other worker has a request in flight, the model call
runs on every core. Concurrent requests still batch
(tests/app/test_predict.py::test_concurrent_requests_each_get_their_own_answer)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, Running, serve
from image_factory import encode, real_xray
from prometheus_client.parser import text_string_to_metric_families

from app import dataplane as dataplane_module
from app.inflight import InFlight
from app.settings import Settings


def stage_counts(server: Running) -> dict[str, float]:
    family = next(f for f in text_string_to_metric_families(server.client.get("/metrics").text)
                  if f.name == "cxr_stage_duration_seconds")
    return {s.labels["stage"]: s.value for s in family.samples if s.name == "cxr_stage_duration_seconds_count"}


@pytest.fixture(scope="module")
def one_core(shipped_model: Path) -> Iterator[Running]:
    """A worker with one core's share (one decode thread), as CXR_WORKERS=auto starts each worker."""
    with serve(Settings(**SERVER_SETTINGS, decode_threads=1)) as running:
        yield running


def post_recording(server: Running, data: bytes) -> tuple[list[tuple[str, str]], dict]:
    """One request; the (thread, predict function) of each model call it made, and the answer."""
    batcher = server.app.state.manager.current.batcher
    original, original_wide = batcher.predict, batcher.wide
    calls: list[tuple[str, str]] = []

    def recording(kind: str, predict):  # type: ignore[no-untyped-def]
        def call(x: np.ndarray) -> np.ndarray:
            calls.append((threading.current_thread().name, kind))
            return predict(x)
        return call

    batcher.predict = recording("narrow", original)
    batcher.wide = recording("wide", original)  # the single test process has no wider runtime: stand-in
    try:
        response = server.client.post("/predict", files={"file": ("film.jpeg", data)})
    finally:
        batcher.predict, batcher.wide = original, original_wide
    assert response.status_code == 200, response.text
    return calls, response.json()


def test_a_lone_request_runs_on_the_event_loop_and_on_every_core(one_core, fullres_images):
    server = one_core
    before = stage_counts(server)
    calls, answer = post_recording(server, fullres_images[0].read_bytes())
    assert calls == [("test-uvicorn", "wide")], calls  # app_harness runs uvicorn's loop in "test-uvicorn"
    timing = answer["timing_ms"]
    assert timing["inference"] > 0 and timing["queue"] >= 0
    after = stage_counts(server)
    for stage in ("decode", "queue", "inference"):  # the stage histograms still see a lone request
        assert after.get(stage, 0) == before.get(stage, 0) + 1, stage


def test_a_lone_request_stays_on_its_share_while_another_worker_is_busy(one_core, fullres_images, tmp_path):
    server = one_core
    dataplane = server.app.state.dataplane
    mine, other = InFlight(tmp_path), InFlight(tmp_path)  # this worker and another one, sharing a run folder
    original, dataplane.inflight = dataplane.inflight, mine
    try:
        with other.image():
            calls, _ = post_recording(server, fullres_images[0].read_bytes())
        assert calls == [("test-uvicorn", "narrow")], calls
        calls, _ = post_recording(server, fullres_images[0].read_bytes())
        assert calls == [("test-uvicorn", "wide")], calls
    finally:
        dataplane.inflight = original
        mine.close()
        other.close()


def test_a_large_lone_upload_goes_to_a_decode_thread_that_runs_the_model_on_every_core(one_core, fullres_images,
                                                                                         monkeypatch):
    monkeypatch.setattr(dataplane_module, "LONE_ON_LOOP_MAX_BYTES", 0)
    calls, _ = post_recording(one_core, fullres_images[0].read_bytes())
    assert len(calls) == 1 and calls[0][0].startswith("decode") and calls[0][1] == "wide", calls


def test_a_lone_png_is_prepared_in_a_decode_thread(one_core, fullres_images):
    """A small PNG may still be slow to decode (a smooth film compresses well): never on the event loop."""
    calls, _ = post_recording(one_core, encode(real_xray(fullres_images[0]), "PNG"))
    assert len(calls) == 1 and calls[0][0].startswith("decode") and calls[0][1] == "wide", calls


def test_a_worker_with_several_cores_prepares_even_a_lone_jpeg_in_a_decode_thread(server, fullres_images):
    """Several decode threads (CXR_WORKERS below the core count): they keep the cores busy, the loop stays free."""
    assert server.app.state.settings.decode_threads > 1 or pytest.skip("one usable core: one decode thread")
    calls, _ = post_recording(server, fullres_images[0].read_bytes())
    assert len(calls) == 1 and calls[0][0].startswith("decode") and calls[0][1] == "wide", calls


def audit_record(server: Running, request_id: str) -> dict:
    from sqlalchemy import select

    from app.audit.models import AuditRecord

    audit = server.app.state.audit
    assert audit.writer.flush(30), "the audit writer did not flush in time"
    with audit.engine.connect() as connection:
        return dict(connection.execute(select(AuditRecord).where(AuditRecord.request_id == request_id))
                    .mappings().one())


def hashed_and_answered(server: Running, data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict]:
    """The order in which the server hashed the upload for its audit row and sent the answer, and the answer."""
    from starlette.responses import Response

    from app.audit.ticket import Ticket

    events: list[str] = []
    describe, respond = Ticket.describe_bytes, Response.__call__

    def recording_describe(ticket: Ticket, upload: bytes) -> None:
        events.append("hashed")
        describe(ticket, upload)

    async def recording_respond(response: Response, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await respond(response, scope, receive, send)
        if scope["path"] == "/predict":
            events.append("answered")

    monkeypatch.setattr(Ticket, "describe_bytes", recording_describe)
    monkeypatch.setattr(Response, "__call__", recording_respond)
    _, answer = post_recording(server, data)
    return events, answer


def test_a_lone_answer_leaves_before_its_upload_is_hashed_and_its_record_has_the_hash(one_core, fullres_images,
                                                                                      monkeypatch):
    """The audit's SHA-256 of a 256 kB upload is ~0.15 ms: on the lone path it is taken for the row, which is made
    once the answer has been sent; the row is the same."""
    data = fullres_images[0].read_bytes()
    events, answer = hashed_and_answered(one_core, data, monkeypatch)
    record = audit_record(one_core, answer["request_id"])
    assert events == ["answered", "hashed"], events
    assert record["input_sha256"] == hashlib.sha256(data).hexdigest() and record["input_bytes"] == len(data)
    assert record["input_format"] == "jpeg" and record["decision"] == answer["prediction"]
    assert record["timings"]["item"] >= answer["timing_ms"]["total"]


def test_an_upload_prepared_in_a_decode_thread_is_hashed_there_before_the_answer(one_core, fullres_images,
                                                                                  monkeypatch):
    data = encode(real_xray(fullres_images[0]), "PNG")
    events, answer = hashed_and_answered(one_core, data, monkeypatch)
    assert events == ["hashed", "answered"], events
    assert audit_record(one_core, answer["request_id"])["input_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_worker_spread_over_every_cpu_prepares_in_a_thread_per_cpu_and_a_lone_jpeg_stays_on_the_loop(
        one_core, fullres_images):
    """A pinned worker whose peers are idle spreads over every CPU (app/pinning.py): one decode thread would hold
    it to ~1.2 cores at full resolution, so it prepares images in a thread per CPU while spread."""
    dataplane = one_core.app.state.dataplane
    png = encode(real_xray(fullres_images[0]), "PNG")
    original = dataplane.spread
    try:
        dataplane.spread = lambda: 2
        calls, _ = post_recording(one_core, png)
        assert len(calls) == 1 and calls[0][0].startswith("decode-spread"), calls
        calls, _ = post_recording(one_core, fullres_images[0].read_bytes())  # lone: no hand-off at all
        assert calls == [("test-uvicorn", "wide")], calls
        pool = dataplane._spread_pool
        assert pool is not None and pool._max_workers == 2
        dataplane.spread = lambda: 0  # pinned again: its own decode thread
        calls, _ = post_recording(one_core, png)
        assert len(calls) == 1 and calls[0][0].startswith("decode_"), calls
    finally:
        dataplane.spread = original
