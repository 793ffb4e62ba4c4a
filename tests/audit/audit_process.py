"""Real ``cxr-serve`` processes for the audit's process tests (store faults, kill -9, replicas), and a load
generator: many concurrent connections with httpx/asyncio, each answer's request id kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from app_harness import ServiceProcess, start_service_process


class Service(ServiceProcess):
    """A cxr-serve process with what the audit's process tests ask of it: readiness with its reason, a timed
    SIGTERM, and SIGKILL."""

    def ready_status(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health/ready", timeout=2).status_code
        return None

    def ready_reason(self) -> str:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return str(httpx.get(f"{self.url}/health/ready", timeout=2).json().get("reason", ""))
        return ""

    def wait_ready(self, status: int = 200, timeout: float = 180.0) -> None:
        self.wait_for("/health/ready", status, timeout)

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds it took."""
        started = time.monotonic()
        code = self.stop(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no drain, no flush
        self.process.wait(30)


def start_service(log: Path, *, port: int | None = None, **env: str) -> Service:
    """The ``cxr-serve`` console script on a loopback port; CXR_* settings from ``env``."""
    started = start_service_process(log, {
        **os.environ, "CXR_DEVICE": "cpu", "CXR_LOG_LEVEL": "info", "CXR_ACCESS_LOG": "false", "CXR_GATE": "off",
        "CXR_RUNTIME": "keras", "CXR_DECODE_THREADS": "2", "CXR_MAX_BATCH_SIZE": "4",  # fewer sizes to warm up
        "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", **env}, port=port)
    return Service(started.process, started.port, started.log)


@contextlib.contextmanager
def running(log: Path, **env: str) -> Iterator[Service]:
    service = start_service(log, **env)
    try:
        yield service
    finally:
        service.stop(30)


@dataclass
class Load:
    """Outcome of a load run: request ids answered 200, and every failure (status or error name)."""

    answered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


class LoadRunner:
    """``connections`` clients posting one X-ray in a loop in a background event loop, until ``stop()``; each
    waits ``pause_s`` between its requests (0: as fast as answers come).
    ``tolerate_errors()``: from then on connection errors are expected (the server was killed on purpose)."""

    def __init__(self, url: str, data: bytes, connections: int = 64, pause_s: float = 0.0) -> None:
        self.url, self.data, self.connections, self.pause_s = url, data, connections, pause_s
        self.load = Load()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._tolerate = asyncio.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoadRunner:
        async def main() -> None:
            await asyncio.gather(*(self._client() for _ in range(self.connections)))

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        return self

    async def _client(self) -> None:
        load, tolerate_errors, pause_s = self.load, self._tolerate, self.pause_s
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                request_id = uuid.uuid4().hex
                try:
                    response = await client.post("/predict", files={"file": ("xray.jpeg", self.data)},
                                                 headers={"X-Request-ID": request_id})
                except httpx.HTTPError as exc:
                    if not tolerate_errors.is_set():
                        load.failed.append(type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
                load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    assert response.headers["x-request-id"] == request_id
                    load.answered.append(request_id)
                elif not tolerate_errors.is_set():
                    load.failed.append(str(response.status_code))
                if pause_s:
                    await asyncio.sleep(pause_s)

    def wait_answers(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.load.answered)
        while len(self.load.answered) < start + count:
            assert time.monotonic() < deadline, f"only {len(self.load.answered) - start} answers in {timeout} s"
            time.sleep(0.05)

    def tolerate_errors(self) -> None:
        self._loop.call_soon_threadsafe(self._tolerate.set)

    def stop(self) -> Load:
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(120)
        return self.load

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.stop()
