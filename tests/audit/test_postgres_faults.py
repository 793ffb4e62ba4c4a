"""A real PostgreSQL stopped in the middle of a load run and started again: in the default mode no prediction
fails and no record within the buffer bound is lost, the overflow is counted (metric and log line); in the
fail-closed mode readiness turns red while the store is down."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from app_harness import SERVER_SETTINGS, Running, serve
from audit_pg import Postgres, fresh_pg_database
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.settings import Settings

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def xrays(xray_224_dir: Path) -> list[bytes]:
    folder = xray_224_dir / "test"
    return [p.read_bytes() for p in sorted(folder.glob("*/*.jpeg"))[::40][:8]]


@pytest.fixture(scope="module")
def running(postgres: Postgres, shipped_model: Path) -> Iterator[Running]:
    settings = Settings(**SERVER_SETTINGS, audit_url=fresh_pg_database(postgres))
    with serve(settings) as server:
        writer = server.app.state.audit.writer
        writer.retry_s = writer.ping_s = 0.2  # notice the outage and the recovery quickly
        wait_for(lambda: writer.store_up)
        yield server


@pytest.fixture
def answered(running: Running, xrays: list[bytes]) -> list[bytes]:
    """The uploads this app answers (200): the gate may refuse a film, and this test is about the store."""
    return [d for d in xrays if running.client.post("/predict", files={"file": ("x", d)}).status_code == 200]


def stored_ids(running: Running) -> list[str]:
    with running.app.state.audit.engine.connect() as connection:
        return list(connection.execute(select(AuditRecord.request_id)).scalars())


def post(running: Running, data: bytes) -> tuple[str, int]:
    request_id = "f-" + uuid.uuid4().hex
    response = running.client.post("/predict", files={"file": ("x", data)}, headers={"X-Request-ID": request_id})
    return request_id, response.status_code


def test_store_down_mid_load_no_prediction_fails_and_no_record_is_lost(running, postgres, answered) -> None:
    writer = running.app.state.audit.writer
    results: list[tuple[str, int]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        n = worker
        while not stop.is_set():
            results.append(post(running, answered[n % len(answered)]))
            n += 1

    with ThreadPoolExecutor(4) as pool:
        for worker in range(4):
            pool.submit(load, worker)
        try:
            wait_for(lambda: len(results) >= 10)
            postgres.stop()
            wait_for(lambda: not writer.store_up)
            during = len(results)
            wait_for(lambda: len(results) >= during + 15)  # answers keep coming while the store is down
            assert writer.buffered > 0
            postgres.start()
            wait_for(lambda: writer.store_up)
            after = len(results)
            wait_for(lambda: len(results) >= after + 10)
        finally:
            stop.set()
            if not postgres.running():
                postgres.start()
    assert {status for _, status in results} == {200}  # no prediction failed
    assert writer.flush(60)
    ids = stored_ids(running)
    sent = [request_id for request_id, _ in results]
    assert sorted(i for i in ids if i.startswith("f-")) == sorted(sent)  # each once, none lost
    assert not writer.dropped


def test_overflow_beyond_the_buffer_is_counted_and_logged(running, postgres, answered, caplog) -> None:
    writer = running.app.state.audit.writer
    caplog.set_level(logging.INFO, logger="cxr.audit")
    metric = 'cxr_audit_records_dropped_total{reason="buffer_full"}'
    try:
        postgres.stop()
        wait_for(lambda: not writer.store_up)
        writer.capacity = writer.buffered + 5  # room for five more
        sent = [post(running, answered[i % len(answered)]) for i in range(12)]
        assert {status for _, status in sent} == {200}  # the service keeps serving
        assert writer.dropped["buffer_full"] == 7
        assert f"{metric} 7.0" in running.client.get("/metrics").text
        assert "cxr_audit_store_up 0.0" in running.client.get("/metrics").text
        assert any("not stored (buffer_full" in r.getMessage() for r in caplog.records)
    finally:
        if not postgres.running():
            postgres.start()
        writer.capacity = 10_000
    assert writer.flush(60)
    ids = set(stored_ids(running))
    assert [request_id in ids for request_id, _ in sent] == [True] * 5 + [False] * 7


def test_fail_closed_readiness_is_red_while_the_store_is_down(postgres, shipped_model, answered) -> None:
    settings = Settings(**SERVER_SETTINGS, audit_url=fresh_pg_database(postgres), audit_required=True)
    with serve(settings) as server:
        writer = server.app.state.audit.writer
        writer.retry_s = writer.ping_s = 0.2
        wait_for(lambda: server.client.get("/health/ready").status_code == 200)
        try:
            postgres.stop()
            wait_for(lambda: server.client.get("/health/ready").status_code == 503)
            body = server.client.get("/health/ready").json()
            assert "audit store unreachable" in body["reason"]
            assert server.client.get("/v2/health/ready").status_code == 503
            refused = server.client.post("/predict", files={"file": ("x", answered[0])})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
            assert "Retry-After" in refused.headers
        finally:
            if not postgres.running():
                postgres.start()
        wait_for(lambda: server.client.get("/health/ready").status_code == 200)
        assert server.client.post("/predict", files={"file": ("x", answered[0])}).status_code == 200
        assert writer.flush(30)  # the refusal made while down was buffered and is stored now
        with server.app.state.audit.engine.connect() as connection:
            codes = list(connection.execute(select(AuditRecord.error_code)).scalars())
        assert "audit_unavailable" in codes
