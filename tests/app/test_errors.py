"""Every error class: the right status and code, one JSON shape with the request id, no stack trace to the
client, and the service still ready afterwards."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading

import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, started
from image_factory import encode, real_xray

from app.main import create_app
from app.settings import Settings

MiB = 1024 * 1024


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


@pytest.fixture(scope="module")
def png(fullres_images) -> bytes:
    return encode(real_xray(fullres_images[0], size=128), "PNG")


@pytest.fixture(autouse=True)
def still_ready_afterwards(request):
    yield
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        assert server.client.get("/health/ready").status_code == 200


def test_400_for_bytes_that_do_not_decode(server, png):
    error = assert_error(server.client.post("/predict", files={"file": ("x.png", png[:80])}), 400,
                         "undecodable_image")
    assert "decode" in error["message"]
    assert_error(server.client.post("/predict", files={"file": ("empty.png", b"")}), 400, "undecodable_image")


def test_415_for_formats_we_do_not_read(server):
    error = assert_error(server.client.post("/predict", files={"file": ("report.pdf", b"%PDF-1.7 ...")}), 415,
                         "unsupported_format")
    assert "PDF" in error["message"] and "PNG" in error["message"]
    # the client's content type and file name are not trusted: the bytes decide
    assert_error(server.client.post("/predict", files={"file": ("film.png", b"hello", "image/png")}), 415,
                 "unsupported_format")


def test_413_for_an_upload_over_the_limit(server):
    limit = SERVER_SETTINGS["max_upload_bytes"]
    just_over = b"\x89PNG\r\n\x1a\n" + b"\x00" * (limit - 7)  # passes the body limit, fails the file limit
    error = assert_error(server.client.post("/predict", files={"file": ("big.png", just_over)}), 413,
                         "upload_too_large")
    assert str(limit) in error["message"]
    far_over = b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * MiB)  # refused from Content-Length, before the body
    assert_error(server.client.post("/predict", files={"file": ("big.png", far_over)}), 413, "upload_too_large")


def _stream_upload(url: str, total: int) -> tuple[int, bytes]:
    """Sends a chunked multipart upload of ``total`` bytes (no Content-Length) until the server answers."""
    host, port = url.removeprefix("http://").split(":")
    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    chunk = b"\x00" * 65536
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: cxr\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        try:
            for part in [head] + [chunk] * (total // len(chunk)):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                sent += len(part)
        except OSError:
            pass  # closed by the server after answering
        while b"}}" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return sent, answer


def test_413_while_streaming_before_the_body_is_in(server):
    total = 64 * MiB
    sent, answer = _stream_upload(server.url, total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"upload_too_large"' in answer
    assert sent < total / 2  # answered long before the client got near the end


def test_413_for_too_many_pixels(server):
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 9_000, 9_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 9_001 * 64)) + chunk(b"IEND", b""))
    assert len(bomb) < 10_000
    error = assert_error(server.client.post("/predict", files={"file": ("bomb.png", bomb)}), 413,
                         "image_too_large")
    assert "81,000,000" in error["message"]


def test_422_for_a_missing_or_misnamed_field(server, png):
    error = assert_error(server.client.post("/predict", files={"image": ("x.png", png)}), 422, "invalid_request")
    assert "file" in error["message"]
    assert_error(server.client.post("/predict", data={"file": "not a file"}), 422, "invalid_request")
    assert_error(server.client.post("/predict"), 422, "invalid_request")


def test_404_and_405_use_the_same_shape(server):
    assert_error(server.client.get("/nowhere"), 404, "not_found")
    assert_error(server.client.get("/predict"), 405, "method_not_allowed")


def test_500_when_the_model_fails_keeps_serving(server, png, monkeypatch):
    batcher = server.app.state.manager.current.batcher

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS at 0xdeadbeef")

    monkeypatch.setattr(batcher, "predict", broken)
    error = assert_error(server.client.post("/predict", files={"file": ("x.png", png)}), 500, "inference_failed")
    assert "0xdeadbeef" not in error["message"]
    monkeypatch.undo()
    assert server.client.post("/predict", files={"file": ("x.png", png)}).status_code == 200


def test_500_for_a_bug_is_logged_with_the_request_id_and_not_leaked(server, png, monkeypatch, caplog):
    async def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("secret internal detail")

    monkeypatch.setattr(server.app.state.dataplane, "predict_image", bug)
    with caplog.at_level(logging.ERROR):
        response = server.client.post("/predict", files={"file": ("x.png", png)}, headers={"X-Request-ID": "bug-1"})
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and error["request_id"] == "bug-1"
    logged = [r for r in caplog.records if "bug-1" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the trace is in the log, for the operator


def test_metrics_count_errors_by_code(server):
    from prometheus_client.parser import text_string_to_metric_families

    server.client.post("/predict", files={"file": ("x.txt", b"plain text")})
    families = {f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)}
    codes = {s.labels["code"]: s.value for s in families["cxr_errors"].samples if s.name == "cxr_errors_total"}
    assert codes["unsupported_format"] >= 1


# -- in-process apps with special settings ------------------------------------------------------------------

def test_503_overloaded_with_retry_after_then_recovers(shipped_model, png):
    app = create_app(Settings(queue_limit=1, max_batch_size=1, access_log=False))

    async def scenario() -> None:
        async with started(app) as client:
            batcher = app.state.manager.current.batcher
            real, gate, entered = batcher.predict, threading.Event(), threading.Event()

            def held(batch: np.ndarray) -> np.ndarray:
                entered.set()
                gate.wait(30)
                return real(batch)

            batcher.predict = held

            def post() -> asyncio.Future:
                return asyncio.ensure_future(client.post("/predict", files={"file": ("x.png", png)}))

            running = post()
            await asyncio.to_thread(entered.wait, 30)  # the worker holds the first image
            waiting = post()
            while batcher.depth < 1:  # the second fills the queue of one
                await asyncio.sleep(0.01)
            refused = await client.post("/predict", files={"file": ("x.png", png)})
            assert_error(refused, 503, "overloaded")
            assert int(refused.headers["retry-after"]) >= 1
            assert (await client.get("/health/ready")).status_code == 200  # busy is not unready
            gate.set()
            assert [(await r).status_code for r in (running, waiting)] == [200, 200]
            assert (await client.post("/predict", files={"file": ("x.png", png)})).status_code == 200
        # after the lifespan ends (shutdown): not ready, and no new work
        import httpx

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cxr") as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
            assert_error(await client.post("/predict", files={"file": ("x.png", png)}), 503, "not_ready")

    asyncio.run(scenario())


def test_503_not_ready_until_the_model_is_loaded(shipped_model, png):
    import httpx

    app = create_app(Settings(access_log=False))  # lifespan never run: the model is not loaded

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cxr") as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not_ready" and ready.json()["reason"] == "model loading"
            assert (await client.get("/health/live")).status_code == 200
            assert_error(await client.post("/predict", files={"file": ("x.png", png)}), 503, "not_ready")
            assert_error(await client.get("/models"), 503, "not_ready")

    asyncio.run(scenario())


def test_a_model_that_fails_to_load_turns_health_red_with_the_reason(tmp_path):
    import httpx

    (tmp_path / "pneumonia" / "1").mkdir(parents=True)
    (tmp_path / "pneumonia" / "1" / "model.h5").write_bytes(b"not an HDF5 file")
    app = create_app(Settings(model_store=tmp_path, access_log=False))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            while app.state.manager.load_error is None:
                await asyncio.sleep(0.02)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cxr") as client:
                ready = await client.get("/health/ready")
                assert ready.status_code == 503 and "not an HDF5 file" in ready.json()["reason"]
                assert (await client.get("/health/live")).status_code == 503

    asyncio.run(scenario())
