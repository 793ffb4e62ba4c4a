"""Soak benchmark: thousands of mixed good and bad requests at concurrency 64 against a live cxr-serve process.

Prints the answers counted by status (and any that differ from what each request should get: zero 5xx is the
bar), latency percentiles, and the server's resident memory at start (ready, idle), after a warm-up, and at the
end: growth after warm-up should stay under 10 % (no leak per request).

    python benchmarks/soak.py                       # 6000 requests, concurrency 64, its own server process
    python benchmarks/soak.py --requests 20000 --max-seconds 900
    python benchmarks/soak.py --url http://127.0.0.1:8000 --pid 1234   # an already running server

Exit status 1 when a 5xx or an unexpected status was seen, or RSS grew over the limit after warm-up.
Bounded in count (--requests) and in time (--max-seconds). Real X-rays from ``../shared/data/fullres_samples``
(or ``$CXR_DATA_DIR``) are used when present; synthetic films otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# -- the request mix ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    expected: int
    path: str
    files: tuple[tuple[str, tuple[str, bytes, str]], ...]


def _encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _film(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    body = 200 - 60 * ((xx - w / 2) ** 2 / (w / 2) ** 2 + (yy - h / 2) ** 2 / (h / 1.5) ** 2)
    for cx in (0.3 * w, 0.7 * w):
        body = np.where(((xx - cx) / (0.16 * w)) ** 2 + ((yy - h / 2) / (0.32 * h)) ** 2 < 1, 60, body)
    return np.clip(body + np.random.default_rng(seed).normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


def _png_bomb(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    data = zlib.compress(b"\x00" * (side + 1) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def real_xrays(limit: int = 8) -> list[bytes]:
    folder = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data")) / "fullres_samples"
    return [p.read_bytes() for p in sorted(folder.glob("*/*.jpeg"))[:limit]] if folder.is_dir() else []


def request_mix() -> list[Kind]:
    film = _film(512, 512, 1)
    png, jpeg = _encode(film, "PNG"), _encode(film, "JPEG", quality=90)
    full = real_xrays() or [_encode(_film(1600, 1300, s), "JPEG", quality=90) for s in range(4)]

    def one(name: str, data: bytes, ctype: str = "application/octet-stream") -> tuple:
        return (("file", (name, data, ctype)),)

    kinds = [Kind(f"xray-{i}", 0.35 / len(full), 200, "/predict", one(f"xray-{i}.jpeg", data, "image/jpeg"))
             for i, data in enumerate(full)]
    kinds += [
        Kind("png-512", 0.12, 200, "/predict", one("film.png", png, "image/png")),
        Kind("jpeg-512-wrong-type", 0.08, 200, "/predict", one("film.pdf", jpeg, "application/pdf")),
        Kind("batch-3", 0.05, 200, "/predict/batch",
             tuple(("files", (f"{i}.png", png, "image/png")) for i in range(3))),
        Kind("text", 0.06, 415, "/predict", one("notes.txt", b"Patient: Doe\n" * 50, "text/plain")),
        Kind("pdf", 0.04, 415, "/predict", one("report.pdf", b"%PDF-1.7\n%%EOF\n", "application/pdf")),
        Kind("truncated-png", 0.06, 400, "/predict", one("cut.png", png[: len(png) // 2], "image/png")),
        Kind("half-jpeg", 0.04, 400, "/predict", one("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")),
        Kind("empty-file", 0.03, 400, "/predict", one("empty.png", b"", "image/png")),
        Kind("png-bomb", 0.04, 413, "/predict", one("bomb.png", _png_bomb(), "image/png")),
        Kind("1x1", 0.04, 400, "/predict", one("dot.png", _encode(np.zeros((1, 1), np.uint8), "PNG"), "image/png")),
        Kind("missing-field", 0.04, 422, "/predict", (("image", ("film.png", png, "image/png")),)),
        Kind("ready-probe", 0.05, 200, "/health/ready", ()),
    ]
    return kinds


# -- the server ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "CXR_HOST": "127.0.0.1", "CXR_PORT": str(port), "CXR_DEVICE": "cpu",
           "CXR_ACCESS_LOG": "false", "CXR_LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.cli"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready in time")


# -- the load -----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    expected: int
    status: int | str
    seconds: float


async def drive(url: str, kinds: list[Kind], n: int, *, concurrency: int, deadline: float, seed: int,
                keepalive_expiry: float = 2.0, on_progress: object = None) -> list[Outcome]:
    rng = random.Random(seed)
    plan = rng.choices(kinds, weights=[k.weight for k in kinds], k=n)
    outcomes: list[Outcome] = []
    next_index = 0
    # A pooled connection must expire on the client before the server's keep-alive timeout (CXR_TIMEOUT_KEEP_ALIVE,
    # 5 s by default) closes it: with equal timeouts, a request written just as the server hangs up is reset.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=keepalive_expiry)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(plan) and time.monotonic() < deadline:
                kind = plan[next_index]
                next_index += 1
                started = time.perf_counter()
                try:
                    if kind.files:
                        response = await client.post(kind.path, files=list(kind.files))
                    else:
                        response = await client.get(kind.path)
                    status: int | str = response.status_code
                    if kind.path == "/predict/batch" and status == 200:  # every file inside must be 200 too
                        inner = {item["status"] for item in response.json()["results"]}
                        status = 200 if inner == {200} else f"batch-items-{sorted(inner)}"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                outcomes.append(Outcome(kind.name, kind.expected, status, time.perf_counter() - started))
                if on_progress is not None:
                    on_progress(len(outcomes))  # type: ignore[operator]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="total requests (default 6000)")
    parser.add_argument("--warmup", type=int, default=600, help="requests before the 'after warm-up' RSS")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed growth after warm-up")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="that server's process id (for RSS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    process = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"cxr-soak-{os.getpid()}.log"
        process, url = start_server(log_path)
        pid = process.pid
        print(f"server: pid {pid} at {url}, log {log_path}")
    try:
        wait_ready(url, process)
        kinds = request_mix()
        rss_start = rss_mib(pid) if pid else float("nan")
        deadline = time.monotonic() + args.max_seconds
        started = time.monotonic()
        warm = asyncio.run(drive(url, kinds, args.warmup, concurrency=args.concurrency, deadline=deadline,
                                 seed=args.seed))
        rss_warm = rss_mib(pid) if pid else float("nan")
        samples: list[tuple[int, float]] = []

        def progress(done: int) -> None:
            if pid and done % 1000 == 0:
                samples.append((args.warmup + done, rss_mib(pid)))

        main_run = asyncio.run(drive(url, kinds, args.requests - args.warmup, concurrency=args.concurrency,
                                     deadline=deadline, seed=args.seed + 1, on_progress=progress))
        elapsed = time.monotonic() - started
        rss_end = rss_mib(pid) if pid else float("nan")
        ready_after = httpx.get(url + "/health/ready", timeout=10).status_code
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
            print(f"server stopped with exit status {code}")

    outcomes = warm + main_run
    by_status = Counter(str(o.status) for o in outcomes)
    unexpected = Counter((o.kind, o.expected, str(o.status)) for o in outcomes if o.status != o.expected)
    server_errors = sum(n for status, n in by_status.items() if status.isdigit() and int(status) >= 500)
    latencies = [o.seconds for o in main_run]
    good = [o.seconds for o in main_run if o.expected == 200 and o.kind != "ready-probe"]
    growth = (rss_end - rss_warm) / rss_warm if pid else float("nan")

    print(f"\n{len(outcomes)} requests ({args.warmup} warm-up) at concurrency {args.concurrency} in {elapsed:.1f}s "
          f"= {len(outcomes) / elapsed:.0f} req/s")
    print("answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    print(f"5xx: {server_errors}; answers other than expected: {sum(unexpected.values())}")
    for (kind, expected, status), n in sorted(unexpected.items()):
        print(f"   {kind}: expected {expected}, got {status} x{n}")
    print("requests by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(Counter(o.kind for o in outcomes).items())))
    print(f"latency after warm-up, all: p50 {percentile(latencies, 50):.0f} ms, "
          f"p90 {percentile(latencies, 90):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    print(f"latency after warm-up, predictions: p50 {percentile(good, 50):.0f} ms, p99 {percentile(good, 99):.0f} ms")
    print(f"server RSS: start {rss_start:.0f} MiB, after warm-up {rss_warm:.0f} MiB, end {rss_end:.0f} MiB "
          f"(growth after warm-up {growth * 100:+.1f}%, limit {args.max_rss_growth * 100:.0f}%)")
    if samples:
        print("RSS along the run: " + ", ".join(f"{n}: {mib:.0f}" for n, mib in samples))
    print(f"readiness after the run: {ready_after}")
    ok = server_errors == 0 and not unexpected and ready_after == 200 and not growth > args.max_rss_growth
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
