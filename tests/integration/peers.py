"""The hospital side, for real: a pynetdicom SR destination, Debian's Orthanc as the PACS, cxr-serve as a
process, and dicom3tools' dciodvfy. Each is started by the tests on free loopback ports in a temp folder and
always stopped (context managers with finally)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from app_harness import ONE_WORKER, free_port, stop_process
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- dciodvfy ---------------------------------------------------------------------------------------------

def dciodvfy(data: bytes, folder: Path) -> list[str]:
    """Runs dicom3tools' IOD verifier on ``data``; fails on any error, returns the warning lines."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    path = folder / f"verify-{time.monotonic_ns()}.dcm"
    path.write_bytes(data)
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors and result.returncode == 0, "dciodvfy:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


# -- an SR destination (C-STORE SCP) ----------------------------------------------------------------------

@dataclass
class SrSink:
    """Receives SRs the way a PACS would; can be stopped and restarted on the same port (destination down)."""

    ae_title: str = "SR_SINK"
    port: int = field(default_factory=free_port)
    received: list[Dataset] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = None
        self._arrived = threading.Condition()

    def _on_store(self, event: evt.Event) -> int:
        dataset = dcmread(io.BytesIO(event.encoded_dataset()))
        with self._arrived:
            self.received.append(dataset)
            self._arrived.notify_all()
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Comprehensive3DSRStorage)
        ae.add_supported_context(SecondaryCaptureImageStorage)  # the heatmap image beside the SR
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.received)} SR(s) arrived, expected {count}"
                self._arrived.wait(left)
            return list(self.received)


@contextlib.contextmanager
def sr_sink() -> Iterator[SrSink]:
    sink = SrSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


# -- processes --------------------------------------------------------------------------------------------

@dataclass
class Process:
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        return stop_process(self.process, timeout)


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    with log.open("ab") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Process(process, log)


def wait_http(process: Process, url: str, timeout: float = 120.0, auth: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.process.poll() is None, f"exited early:\n{process.log_text()[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, auth=auth).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} not up in {timeout}s:\n{process.log_text()[-3000:]}"
        time.sleep(0.2)


ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


@dataclass
class Orthanc:
    url: str
    dicom_port: int
    ae_title: str
    process: Process
    auth: tuple[str, str] | None = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, auth=self.auth)


def orthanc_plugins(*names: str) -> list[str]:
    """Paths of Debian's Orthanc plugins (e.g. "OrthancDicomWeb"); skips the test where one is not installed."""
    paths = [ORTHANC_PLUGINS / f"lib{name}.so" for name in names]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        pytest.skip(f"Orthanc plugin(s) {', '.join(missing)} not installed (Debian packages orthanc-dicomweb, "
                    "orthanc-webviewer)")
    return [str(path) for path in paths]


@contextlib.contextmanager
def orthanc(folder: Path, modalities: dict[str, tuple[str, str, int]], *, plugins: list[str] | None = None,
            users: dict[str, str] | None = None, **extra: object) -> Iterator[Orthanc]:
    """Debian's Orthanc, headless: generated configuration, storage in ``folder``, loopback only, and
    ``modalities`` (name -> AE title, host, port) it may send to. ``plugins``: paths to load; ``users``: HTTP
    basic authentication on (else none); ``extra``: more configuration (e.g. "DicomWeb")."""
    # Debian installs it in /usr/sbin, which a non-root PATH may lack
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.skip("Orthanc not installed (Debian package orthanc)")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "cxr-test-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomScuTimeout": 10,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": plugins or [], "SaveJobs": False, "StorageCompression": False, "HttpsVerifyPeers": False,
        **({"AuthenticationEnabled": True, "RegisteredUsers": users} if users else {}), **extra,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    process = spawn([binary, str(path)], folder / "orthanc.log")
    auth = next(iter(users.items())) if users else None
    try:
        wait_http(process, f"http://127.0.0.1:{http_port}/system", timeout=60, auth=auth)
        yield Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", process, auth)
    finally:
        process.stop(30)


@dataclass
class CxrServe:
    url: str
    dicom_port: int
    process: Process


def start_cxr_serve(log: Path, *, http_port: int, dicom_port: int, **env: str) -> CxrServe:
    """``python -m app.cli`` (what the ``cxr-serve`` script runs) with the DICOM node on; waits until ready."""
    environment = {**os.environ, **ONE_WORKER, "CXR_HOST": "127.0.0.1", "CXR_PORT": str(http_port),
                   "CXR_DEVICE": "cpu", "CXR_DICOM_PORT": str(dicom_port), "CXR_LOG_LEVEL": "info",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "CXR_ACCESS_LOG": "true", **env}
    environment.pop("CXR_MODEL_STORE", None)  # the shipped model
    process = spawn([sys.executable, "-m", "app.cli"], log, environment)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(process, f"{url}/health/ready", timeout=180)
    except BaseException:
        process.stop(30)
        raise
    return CxrServe(url, dicom_port, process)
