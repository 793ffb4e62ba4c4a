"""Explanation cost: Grad-CAM latency at concurrency 1 against a plain prediction, and plain throughput on a server
that has served explanations against one that never did.

Two `cxr-serve` processes (same settings) on free loopback ports: A only ever gets plain predictions; B gets
explanations too (so its gradient function is traced and held). Figures are ratios within one run: absolute
numbers on a shared 2-core machine are noisy.

    python benchmarks/explain.py                 # ~3 min
    python benchmarks/explain.py --quick         # smoke test, figures meaningless
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = Path(sys.executable).parent / "cxr-serve"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "CXR_HOST": "127.0.0.1", "CXR_PORT": str(port), "CXR_ACCESS_LOG": "false",
           "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise SystemExit(f"cxr-serve exited with {process.returncode} (settings: {env_extra})")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("cxr-serve not ready after 180 s")
        time.sleep(0.2)


def post(client: httpx.Client, path: str, name: str, data: bytes) -> float:
    started = time.perf_counter()
    response = client.post(path, files={"file": (name, data)})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path}: HTTP {response.status_code} {response.text[:300]}")
    return elapsed


def latency(url: str, name: str, data: bytes, n: int) -> tuple[list[float], list[float]]:
    """Plain and explained requests interleaved, one at a time (drift hits both alike)."""
    plain, explained = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(n):
            plain.append(post(client, "/predict", name, data))
            explained.append(post(client, "/predict?explain=true", name, data))
    return plain, explained


def throughput(url: str, path: str, upload: tuple[str, bytes], concurrency: int, seconds: float) -> float:
    count = [0] * concurrency
    stop = time.monotonic() + seconds

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop:
                post(client, path, *upload)
                count[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(count) / (time.monotonic() - started)


def ms(values: list[float], q: float = 0.5) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT.parent / "shared"
                                                                         / "data")))
    parser.add_argument("--requests", type=int, default=40, help="pairs of requests per upload at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput point")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, A and B alternating")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--env", action="append", default=["CXR_GATE=off", "CXR_AUDIT_ENABLED=false"],
                        help="KEY=VALUE for both servers (default: gate and audit off, they cost the same with "
                             "or without an explanation)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds, args.rounds = 5, 2.0, 1

    fullres = max((p for p in (args.data / "fullres_samples").glob("*/*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    small = sorted((args.data / "chest_xray_224" / "train" / "NORMAL").glob("*.jpeg"))[0]
    uploads = [(small.name, small.read_bytes()), (fullres.name, fullres.read_bytes())]
    env = dict(item.split("=", 1) for item in args.env)

    servers = [start(env), start(env)]
    (_, url_a), (_, url_b) = servers
    try:
        for url in (url_a, url_b):
            for name, data in uploads:
                with httpx.Client(base_url=url, timeout=60) as client:
                    for _ in range(3):
                        post(client, "/predict", name, data)
        with httpx.Client(base_url=url_b, timeout=120) as client:  # B traces its gradient function
            first = post(client, "/predict?explain=true", *uploads[0])
        print(f"first explanation on a fresh server (traces the gradient function): {1000 * first:.0f} ms\n")

        print("Latency at concurrency 1, server B, plain and explained interleaved")
        print(f"{'upload':<34}{'plain p50':>11}{'p90':>8}{'explain p50':>13}{'p90':>8}{'ratio p50':>11}")
        for name, data in uploads:
            plain, explained = latency(url_b, name, data, args.requests)
            label = f"{name[:24]} ({len(data) // 1024} kB)"
            print(f"{label:<34}{ms(plain):>9.1f}ms{ms(plain, 0.9):>6.1f}ms{ms(explained):>11.1f}ms"
                  f"{ms(explained, 0.9):>6.1f}ms{ms(explained) / ms(plain):>10.2f}x")

        name, data = uploads[1]
        print(f"\nPlain throughput, concurrency {args.concurrency}, {name}: A (never explained) vs B (explained)")
        a_rates, b_rates = [], []
        for _ in range(args.rounds):
            a_rates.append(throughput(url_a, "/predict", (name, data), args.concurrency, args.seconds))
            b_rates.append(throughput(url_b, "/predict", (name, data), args.concurrency, args.seconds))
        explain_rate = throughput(url_b, "/predict?explain=true", (name, data), args.concurrency, args.seconds)
        a, b = statistics.median(a_rates), statistics.median(b_rates)
        print(f"A plain: {a:.1f} req/s (rounds {', '.join(f'{r:.1f}' for r in a_rates)})")
        print(f"B plain: {b:.1f} req/s (rounds {', '.join(f'{r:.1f}' for r in b_rates)})")
        print(f"B / A plain throughput: {b / a:.3f}")
        print(f"B explained throughput: {explain_rate:.1f} req/s ({explain_rate / b:.2f} of plain)")
    finally:
        for process, _ in servers:
            process.send_signal(signal.SIGTERM)
        for process, _ in servers:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
