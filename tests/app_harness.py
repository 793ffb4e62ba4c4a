"""Running the real app in tests: behind a real uvicorn server on a free loopback port (in a thread), in-process
through httpx's ASGI transport with the lifespan run, or as a real ``cxr-serve`` process; plus the in-process
reference prediction.

Importable from any test (tests/conftest.py puts this folder on sys.path). Fixtures live in tests/app/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from model_store.artifact import LoadedArtifact
from model_store.calibration import apply_temperature
from model_store.imaging import decode
from model_store.preprocessing import preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
# Small limits so the limit tests send little; everything else is the default configuration.
# The float32 reference runtime, so answers compare exactly with model(x); the accelerated runtimes (the default,
# auto) are checked against it within the verification tolerance in tests/app/test_runtimes.py.
SERVER_SETTINGS = {"max_upload_bytes": 2 * MiB, "max_batch_files": 8, "access_log": False, "runtime": "keras"}


@dataclass
class Running:
    app: FastAPI
    url: str
    client: httpx.Client


def wait_ready(app: FastAPI, timeout: float = 120.0) -> None:
    manager = app.state.manager
    deadline = time.monotonic() + timeout
    while manager.not_ready_reason() is not None:
        if manager.load_error is not None:
            raise RuntimeError(f"model failed to load: {manager.load_error}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout}s: {manager.not_ready_reason()}")
        time.sleep(0.05)


# CXR_WORKERS defaults to auto (one worker per core): tests not about workers start one, and so save the
# start-up and memory of the others. Tests about workers pass their own CXR_WORKERS.
ONE_WORKER = {"CXR_WORKERS": "1"}


def service_command() -> list[str]:
    """The ``cxr-serve`` console script of this environment (``python -m app.cli`` where it is not installed)."""
    script = Path(sys.executable).parent / "cxr-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


@dataclass
class ServiceProcess:
    """A real ``cxr-serve`` process on a loopback port, its output in ``log``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    scheme: str = "http"  # https where it serves CXR_TLS_CERT

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, path: str, status: int = 200, timeout: float = 120.0,
                 verify: ssl.SSLContext | bool = True) -> httpx.Response:
        """Polls ``path`` until it answers ``status``; fails with the log's tail if the process exits or is late."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"cxr-serve exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(self.url + path, timeout=5, verify=verify)
                if response.status_code == status:
                    return response
            time.sleep(0.1)
        raise AssertionError(f"{path} did not answer {status} in {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        return stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (SIGKILL after ``timeout`` s) where it still runs; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_service_process(log: Path, env: dict[str, str], *, port: int | None = None,
                          scheme: str = "http") -> ServiceProcess:
    """``cxr-serve`` (this environment's console script) as a real process on ``port`` (a free loopback port by
    default) with the environment ``env`` (CXR_HOST defaults to loopback); its output appended to ``log``.
    One worker process unless ``env`` names CXR_WORKERS: each worker loads the model (CPU time and ~0.9 GiB)."""
    port = port or free_port()
    environment = {"CXR_HOST": "127.0.0.1", **ONE_WORKER, **env, "CXR_PORT": str(port)}
    with log.open("ab") as handle:
        process = subprocess.Popen(service_command(), cwd=REPO_ROOT, env=environment, stdout=handle,
                                   stderr=subprocess.STDOUT)
    return ServiceProcess(process, port, log, scheme)


def free_port() -> int:
    """A loopback port free right now (for servers started as separate processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(settings: Settings) -> Iterator[Running]:
    """uvicorn in a thread on a pre-bound free loopback port: real HTTP, real multipart, real streaming."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        wait_ready(app)
        with httpx.Client(base_url=url, timeout=60) as client:
            yield Running(app, url, client)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan in this event loop, waits for the model, and gives an in-process client."""
    async with app.router.lifespan_context(app):
        await asyncio.to_thread(wait_ready, app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cxr") as client:
            yield client


def reference_probabilities(artifact: LoadedArtifact, data: list[bytes]) -> np.ndarray:
    """``calibrate(model(preprocess(decode(bytes))))`` with the artifact's own spec and stored temperature:
    what the API must answer."""
    spec = artifact.metadata.preprocessing
    batch = np.stack([preprocess(decode(d, min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                      for d in data])
    return apply_temperature(np.asarray(artifact.model(batch, training=False)), artifact.metadata.temperature)
