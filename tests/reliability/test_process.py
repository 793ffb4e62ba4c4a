"""Against a real ``cxr-serve`` process: stalled and slow clients, uploads refused while they stream, SIGTERM
under load (readiness red at once, every accepted request answered 200, exit 0 within the grace period), and a
broken model at start-up (one clear log line, both probes 503, a clean stop)."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import time
from collections.abc import Iterator

import hostile
import httpx
import numpy as np
import pytest
from app_harness import ServiceProcess
from reliability_support import assert_ready, require_shipped_model, start_server

pytestmark = pytest.mark.slow

KEEP_ALIVE_S = 1
GRACE_S = 20
UPLOAD_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServiceProcess]:
    require_shipped_model()
    live = start_server(tmp_path_factory.mktemp("serve") / "server.log", CXR_TIMEOUT_KEEP_ALIVE=str(KEEP_ALIVE_S),
                        CXR_GRACEFUL_TIMEOUT=str(GRACE_S), CXR_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
                        CXR_MAX_BATCH_SIZE="1", CXR_DECODE_THREADS="1",
                        CXR_GATE="off")  # the process tests send synthetic films, which the gate refuses
    try:
        live.wait_for("/health/ready", 200)
        yield live
    finally:
        live.stop()


# -- raw HTTP, so a test controls every byte and every pause ----------------------------------------------
def multipart_request(path: str, data: bytes, port: int, extra_headers: str = "") -> bytes:
    body, content_type = hostile.multipart([(b"file", b"xray.png", data)])
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n")
    return head.encode() + body


def read_response(sock: socket.socket, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """Reads one response on a ``Connection: close`` socket."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


# -- slow and stalled clients -----------------------------------------------------------------------------
def test_stalled_and_slow_clients_do_not_hold_the_server(server):
    """Connections that send nothing, half a header, or a body that never finishes cost the server a socket
    each (asyncio), not a worker: everybody else is served as usual meanwhile."""
    stalled: list[socket.socket] = []
    try:
        for i in range(60):
            sock = connect(server.port)
            if i % 3 == 1:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
            elif i % 3 == 2:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                             b"Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"")
            stalled.append(sock)
        image = {"file": ("x.png", hostile.png(), "image/png")}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(10):
                started = time.monotonic()
                response = client.post("/predict", files=image)
                assert response.status_code == 200
                assert time.monotonic() - started < 5.0
            assert_ready(client)
    finally:
        for sock in stalled:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(server):
    with connect(server.port) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        response = b""
        while not response.endswith(b'{"status":"alive"}'):
            response += sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # the server hung up on the idle connection
        assert KEEP_ALIVE_S - 0.5 < time.monotonic() - started < KEEP_ALIVE_S + 5


def test_a_declared_oversized_upload_is_refused_before_its_body_is_sent(server):
    with connect(server.port) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     f"Content-Length: {50 * UPLOAD_LIMIT}\r\nConnection: close\r\n\r\n".encode())
        status, _, body = read_response(sock, timeout=10)
    assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"


def test_a_chunked_oversized_upload_is_refused_while_it_streams(server):
    """No Content-Length: the limit is enforced by counting bytes as they arrive; the answer comes long before
    the client has finished sending, and the server never holds the whole upload."""
    total, sent = 40 * UPLOAD_LIMIT, 0
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    answer = b""
    with connect(server.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")  # a well-formed start: the file streams
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(frame)
                sent += len(chunk)
        with contextlib.suppress(ConnectionResetError):
            sock.settimeout(10)
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
    assert sent < total / 2, f"the server let {sent} bytes stream in past a {UPLOAD_LIMIT}-byte limit"
    if answer:  # normally the 413 arrives; a reset while we were still sending is a refusal too
        assert answer.startswith(b"HTTP/1.1 413")
        assert b'"upload_too_large"' in answer


# -- SIGTERM under load (last: it stops the module's server) ----------------------------------------------
def test_sigterm_under_load_drains_every_accepted_request_and_exits_0(server):
    n = 16
    side = 4000  # a smooth 16-Mpixel film: a small upload (parsed at once) that takes a while to decode
    yy, xx = np.mgrid[0:side, 0:side]
    image = hostile.png(((xx + yy) * 255 // (2 * side)).astype(np.uint8))
    payload = multipart_request("/predict", image, server.port)
    sockets = []
    for _ in range(n):
        sock = connect(server.port)
        sock.sendall(payload)  # every request is complete on the wire before the signal
        sockets.append(sock)
    time.sleep(0.5)  # let the server accept and parse them all (about 160 KB each)
    answered_before = sum(bool(select.select([s], [], [], 0)[0]) for s in sockets)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)

    probes = []  # readiness as a load balancer would see it from now on
    while time.monotonic() - signalled < 5:
        try:
            probes.append(httpx.get(server.url + "/health/ready", timeout=2).status_code)
        except httpx.TransportError:
            probes.append("refused")
            break
        time.sleep(0.01)

    results = []
    for sock in sockets:
        with sock:
            status, _, body = read_response(sock)
            results.append((status, json.loads(body)))
    code = server.process.wait(timeout=GRACE_S + 15)
    elapsed = time.monotonic() - signalled
    log = server.log_text()

    assert answered_before < n, "every request finished before SIGTERM: the test did not test a drain"
    assert 200 not in probes, probes  # never ready again once the signal arrived
    assert [status for status, _ in results] == [200] * n, [(s, b.get("error")) for s, b in results]
    assert all(body["prediction"] in ("NORMAL", "PNEUMONIA") for _, body in results)
    assert code == 0, log[-3000:]
    assert elapsed < GRACE_S, f"shutdown took {elapsed:.1f}s"
    assert "Application shutdown complete" in log
    print(f"drain: {n - answered_before} of {n} requests in flight at SIGTERM, all answered 200; "
          f"probes after the signal {probes}; exit {code} after {elapsed:.2f}s")


# -- a broken model at start-up, in a real process --------------------------------------------------------
def test_a_corrupt_model_at_start_logs_one_clear_line_and_stays_not_ready(tmp_path):
    store = tmp_path / "store"
    (store / "pneumonia" / "1").mkdir(parents=True)
    (store / "pneumonia" / "1" / "model.h5").write_bytes(b"half a download of a model\n" * 100)
    live = start_server(tmp_path / "server.log", CXR_MODEL_STORE=str(store))
    try:
        failed = live.wait_for("/health/live", 503, timeout=120)
        assert failed.json()["status"] == "failed" and "not an HDF5 file" in failed.json()["reason"]
        ready = httpx.get(live.url + "/health/ready", timeout=5)
        assert ready.status_code == 503 and "model failed to load" in ready.json()["reason"]
        predict = httpx.post(live.url + "/predict", files={"file": ("x.png", hostile.png(), "image/png")}, timeout=10)
        assert predict.status_code == 503 and predict.json()["error"]["code"] == "not_ready"
        assert live.process.poll() is None  # decided: stay up and say why; the orchestrator restarts us
    finally:
        code = live.stop(timeout=30)
    log = live.log_text()
    lines = [line for line in log.splitlines() if "ERROR" in line and "model failed to load" in line]
    assert len(lines) == 1 and "not an HDF5 file" in lines[0] and "cxr.model" in lines[0], log[-3000:]
    assert "Traceback" not in log  # a 503 not_ready is an expected state, logged in one line
    assert "refused: 503 not_ready" in log
    assert str(store / "pneumonia" / "1" / "model.h5") in lines[0]  # the operator's log has the full path
    assert code == 0
