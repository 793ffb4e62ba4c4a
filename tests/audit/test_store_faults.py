"""A real ``cxr-serve`` process whose audit store cannot be written (what a read-only container without a volume
at /var/lib/cxr-serve gets): one error line naming the path and the fix at start, readiness as
CXR_AUDIT_REQUIRED says, and SIGTERM ends it with exit 0 well inside a 10 s grace period."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from audit_process import running

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def unwritable_path(tmp_path: Path) -> Path:
    # a folder that is a file: no mkdir, no open, even as root (a chmod would not stop root)
    blocker = tmp_path / "read-only-root"
    blocker.write_text("not a folder")
    return blocker / "cxr-serve" / "audit.db"


def fault_lines(log: str, path: Path) -> list[str]:
    return [line for line in log.splitlines() if "ERROR" in line and "cannot be written" in line
            and str(path) in line]


def test_unwritable_store_is_reported_at_start_and_the_stop_is_bounded(shipped_model: Path, xray_224_dir: Path,
                                                                       tmp_path: Path) -> None:
    path = unwritable_path(tmp_path)
    data = sorted((xray_224_dir / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    with running(tmp_path / "serve.log", CXR_AUDIT_PATH=str(path), CXR_AUDIT_FLUSH_TIMEOUT_S="2",
                 CXR_GRACEFUL_TIMEOUT="8") as service:
        service.wait_ready(200)  # not required: it serves, and says loudly that nothing is recorded
        lines = fault_lines(service.log_text(), path)
        assert len(lines) == 1, service.log_text()[-3000:]
        assert "Fix: mount a writable volume at" in lines[0] and str(path.parent) in lines[0]
        for _ in range(3):  # answered; their records wait in memory for a store that never comes
            assert httpx.post(f"{service.url}/predict", files={"file": ("x.jpeg", data)}, timeout=60).status_code == 200
        code, took = service.terminate()
    assert code == 0, service.log_text()[-3000:]
    assert took < 8, f"SIGTERM took {took:.1f} s"
    log = service.log_text()
    assert re.search(r"audit: 3 record\(s\) not stored \(shutdown", log), log[-2000:]
    assert "CXR_AUDIT_FLUSH_TIMEOUT_S" in log


def test_unwritable_store_keeps_a_required_audit_unready(shipped_model: Path, tmp_path: Path) -> None:
    path = unwritable_path(tmp_path)
    with running(tmp_path / "serve.log", CXR_AUDIT_PATH=str(path), CXR_AUDIT_REQUIRED="true",
                 CXR_AUDIT_FLUSH_TIMEOUT_S="2", CXR_GRACEFUL_TIMEOUT="8") as service:
        service.wait_ready(503)
        # the model loads; readiness stays red, and the reason it gives is the audit store
        deadline = time.monotonic() + 180
        while "audit store unreachable" not in (reason := service.ready_reason()):
            assert time.monotonic() < deadline, reason
            time.sleep(0.2)
        assert httpx.get(f"{service.url}/health/live", timeout=5).status_code == 200
        assert len(fault_lines(service.log_text(), path)) == 1
        assert "readiness stays 503" in fault_lines(service.log_text(), path)[0]
        code, took = service.terminate()
    assert code == 0 and took < 8, (code, took, service.log_text()[-2000:])
