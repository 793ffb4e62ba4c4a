"""A real cxr-serve process on a free loopback port, over a temporary model store we can add versions to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from app_harness import ONE_WORKER, free_port, stop_process

from model_store.registry import DEFAULT_STORE, ModelRegistry

SHIPPED = DEFAULT_STORE / "pneumonia" / "1" / "model.h5"
API_KEY = "test-key-0123456789abcdef"



@dataclass
class LiveServer:
    url: str
    port: int
    store: Path
    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cxr-serve exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"cxr-serve not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")


def start_server(store: Path, log: Path, **env: str) -> LiveServer:
    port = free_port()
    environment = {**os.environ, **ONE_WORKER, "CXR_PORT": str(port), "CXR_HOST": "127.0.0.1",
                   "CXR_MODEL_STORE": str(store), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    handle = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app.cli"], env=environment, stdout=handle,
                               stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", port, store, process, log)
    server.wait_ready()
    return server


def stop_server(server: LiveServer) -> int:
    return stop_process(server.process, 30)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHIPPED.is_file():
        pytest.skip(f"shipped model missing at {SHIPPED}")
    root = tmp_path_factory.mktemp("store")
    target = ModelRegistry(root).path_for("pneumonia", 1)
    target.parent.mkdir(parents=True)
    shutil.copy2(SHIPPED, target)
    return root


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(store, tmp_path_factory.mktemp("log") / "server.log", CXR_API_KEYS=API_KEY)
    yield live
    stop_server(live)
