"""The shutdown drain includes the audit trail: records still buffered when the server stops are written."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from app_harness import SERVER_SETTINGS, serve

from app.settings import Settings

pytestmark = pytest.mark.slow


def test_records_buffered_at_shutdown_are_written_by_the_drain(shipped_model: Path, xray_224_dir: Path,
                                                               tmp_path: Path) -> None:
    data = sorted((xray_224_dir / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    path = tmp_path / "audit.db"
    sent = []
    with serve(Settings(**SERVER_SETTINGS, audit_path=path)) as server:
        writer = server.app.state.audit.writer
        deadline = time.monotonic() + 60
        while not writer.store_up:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        blocker = sqlite3.connect(path, timeout=30, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot write until this ends
        for _ in range(5):
            response = server.client.post("/predict", files={"file": ("x", data)})
            sent.append(response.headers["x-request-id"])
        assert writer.buffered == 5  # all still waiting when the server is told to stop
        # the store comes back only after the shutdown has begun: only the drain can write them now
        release = threading.Timer(1.5, lambda: (blocker.rollback(), blocker.close()))
        release.start()
    release.join()
    # serve() has returned: the server and its lifespan's drain (audit.close) are done
    with sqlite3.connect(path) as connection:
        stored = [row[0] for row in connection.execute("SELECT request_id FROM audit_records")]
    assert sorted(stored) == sorted(sent)
    assert writer.buffered == 0 and not writer.dropped
