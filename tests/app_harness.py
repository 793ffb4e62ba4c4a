"""Running the real app in tests: behind a real uvicorn server on a free loopback port (in a thread), or
in-process through httpx's ASGI transport with the lifespan run; plus the in-process reference prediction.

Importable from any test (tests/conftest.py puts this folder on sys.path). Fixtures live in tests/app/conftest.py.
"""

from __future__ import annotations

import asyncio
import socket
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


def service_command() -> list[str]:
    """The ``cxr-serve`` console script of this environment (``python -m app.cli`` where it is not installed)."""
    script = Path(sys.executable).parent / "cxr-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def wait_process_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 120.0) -> None:
    """Poll ``/health/ready`` of a service process until 200; fail with its log tail if it exits or is late."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"cxr-serve exited early:\n{log_path.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"not ready in time:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.2)


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
