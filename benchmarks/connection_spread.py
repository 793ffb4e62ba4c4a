"""How a multi-worker cxr-serve shares out new connections, and what a worker's death costs new connections.

``--mode burst``: each round, one connection for ``--lone`` s (a lone client keeps one worker awake), then wrk
opens ``--connections`` connections: connections per worker (from ``ss``), req/s and the server's cores.
``--mode kill``: four threads open a new connection per request (``GET /health/live``) while one worker is
killed (SIGKILL) after 1 s; how many of them fail, and how, per kill.

With ``--base REV`` that revision is measured too, in alternating runs (the same export as ``ab_code.py``);
``--env`` settings apply to both (e.g. ``CXR_REUSE_PORT=false`` for uvicorn's one shared socket).

Usage: ``python benchmarks/connection_spread.py --mode burst --rounds 4 [--base REV]`` (needs ``wrk`` and ``ss``).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import load_arguments, prepare, service_env
from benchmarks.ab_code import start_revisions
from benchmarks.forced_skew import connections_per_worker, is_worker
from benchmarks.loadgen import Upload, run_wrk
from benchmarks.servers import Server, tree_cpu_seconds, tree_pids

LOOK_AFTER_S = 1.5  # wrk has opened its connections by then
HAMMER_THREADS = 4


def burst_round(server: Server, upload: Upload, args: argparse.Namespace, workdir: Path) -> str:
    assert server.proc is not None
    run_wrk(server.url("/predict"), upload, connections=1, seconds=args.lone, threads=1, workdir=workdir)
    time.sleep(0.3)
    seen: dict[str, list[int]] = {}
    looking = threading.Timer(LOOK_AFTER_S, lambda: seen.update(c=connections_per_worker(server.port)))
    cpu, started = tree_cpu_seconds(server.proc.pid), time.monotonic()
    looking.start()
    result = run_wrk(server.url("/predict"), upload, connections=args.connections, seconds=args.duration,
                     threads=1, workdir=workdir)
    cores = (tree_cpu_seconds(server.proc.pid) - cpu) / (time.monotonic() - started)
    looking.join()
    ok = sum(n for status, n in result["statuses"].items() if str(status).startswith("2"))
    return f"{ok / args.duration:7.1f} req/s, {cores:.2f} cores, connections per worker {seen.get('c')}"


def kill_round(server: Server) -> str:
    assert server.proc is not None
    counts: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
                    connection.sendall(b"GET /health/live HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    answer = b"".join(iter(lambda c=connection: c.recv(65536), b""))
                counts["ok" if answer.startswith(b"HTTP/1.1 200") else "not 200"] += 1
            except OSError as exc:
                counts[type(exc).__name__] += 1

    threads = [threading.Thread(target=hammer) for _ in range(HAMMER_THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    victim = next(pid for pid in tree_pids(server.proc.pid) if is_worker(pid))
    os.kill(victim, signal.SIGKILL)
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join()
    ok = counts.pop("ok", 0)
    return f"{ok} answered, {sum(counts.values())} failed {dict(counts) or ''} (kill -9 of worker {victim})"


def whole(server: Server, timeout: float = 300) -> None:
    """Until every worker is up and ready again (a replacement loads the model)."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while len([p for p in tree_pids(server.proc.pid) if is_worker(p)]) < 2 or not server.poll_ready():
        if time.monotonic() > deadline:
            sys.exit("no replacement worker came up")
        time.sleep(0.5)
    time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--mode", choices=("burst", "kill"), default="burst")
    parser.add_argument("--lone", type=int, default=3, help="seconds of one connection before each burst")
    parser.add_argument("--base", help="a git revision to measure too, in alternating runs")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the server(s)")
    parser.set_defaults(duration=5, rounds=4)
    args = parser.parse_args()
    workdir, upload = prepare(args, "cxr-spread-")
    shared = service_env(args.env)
    servers: dict[str, Server] = {}
    try:
        start_revisions(args.base, shared, workdir, servers)
        for server in servers.values():
            server.signal(signal.SIGSTOP)
        for round_ in range(args.rounds):
            for name, server in servers.items():
                server.signal(signal.SIGCONT)
                if round_ == 0 and args.mode == "burst":
                    run_wrk(server.url("/predict"), upload, connections=args.connections, seconds=args.warmup,
                            threads=1, workdir=workdir)
                result = burst_round(server, upload, args, workdir) if args.mode == "burst" else kill_round(server)
                if args.mode == "kill":
                    whole(server)
                server.signal(signal.SIGSTOP)
                print(f"round {round_ + 1} {name}: {result}", flush=True)
    finally:
        for server in servers.values():
            server.signal(signal.SIGCONT)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
