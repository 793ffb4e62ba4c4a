"""Every connection on one worker: what a multi-worker cxr-serve serves when the kernel hands one worker a whole
burst of connections (seen in load runs: 64 of 64, or 69 of 74). One worker is stopped (SIGSTOP) while wrk opens
its connections, so the other accepts them all, then it is let go; the figures are taken from 2 s after that.
The workers share one listening socket here (``CXR_REUSE_PORT=false``, unless ``--env`` says otherwise): with a
socket per worker the stopped worker's socket still queues its share, and no skew is forced.

Usage: ``python benchmarks/forced_skew.py --upload fullres --rounds 3 [--base REV]`` (needs ``wrk`` and ``ss``).
With ``--base``, that revision is measured too, in alternating rounds (the same export as ``ab_code.py``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import load_arguments, prepare, service_env
from benchmarks.ab_code import start_revisions
from benchmarks.loadgen import Upload, run_wrk
from benchmarks.servers import Server, tree_cpu_seconds, tree_pids

THAW_AFTER_S = 0.7  # wrk has opened its connections by then
SETTLE_S = 2.0  # the placement's 0.3 s, and the first requests after the thaw


def connections_per_worker(port: int) -> list[int]:
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=False).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True)


def is_worker(pid: int) -> bool:
    """A uvicorn worker (spawned), not the supervisor or multiprocessing's resource tracker."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def one_round(server: Server, upload: Upload, victim: int, args: argparse.Namespace, workdir: Path) -> str:
    """wrk for ``args.duration`` s with ``victim`` stopped while it connects; req/s and cores after the settle."""
    assert server.proc is not None
    seen: dict[str, float | list[int]] = {}

    def thaw() -> None:
        time.sleep(THAW_AFTER_S)
        os.kill(victim, signal.SIGCONT)
        time.sleep(SETTLE_S)
        seen.update(connections=connections_per_worker(server.port), cpu=tree_cpu_seconds(server.proc.pid),
                    at=time.monotonic())

    os.kill(victim, signal.SIGSTOP)
    thawing = threading.Thread(target=thaw)
    thawing.start()
    try:
        result = run_wrk(server.url("/predict"), upload, connections=args.connections, seconds=args.duration,
                         threads=1, workdir=workdir)
    finally:
        thawing.join()
    cores = (tree_cpu_seconds(server.proc.pid) - seen["cpu"]) / (time.monotonic() - seen["at"])  # type: ignore[operator]
    ok = sum(n for status, n in result["statuses"].items() if str(status).startswith("2"))
    return (f"{ok / args.duration:6.1f} req/s over the run, {cores:.2f} cores after the settle, connections per "
            f"worker {seen['connections']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--base", help="a git revision to measure too, in alternating rounds")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the server(s)")
    parser.set_defaults(duration=8)
    args = parser.parse_args()
    workdir, upload = prepare(args, "cxr-skew-")
    shared = service_env(["CXR_REUSE_PORT=false", *args.env])
    servers: dict[str, Server] = {}
    try:
        start_revisions(args.base, shared, workdir, servers)
        for server in servers.values():  # warm, with both workers up
            run_wrk(server.url("/predict"), upload, connections=args.connections, seconds=args.warmup, threads=1,
                    workdir=workdir)
        for round_ in range(args.rounds):
            for name, server in servers.items():
                assert server.proc is not None
                workers = [pid for pid in tree_pids(server.proc.pid) if is_worker(pid)]
                if len(workers) < 2:
                    sys.exit(f"{name}: one worker process: nothing to skew (CXR_WORKERS)")
                print(f"round {round_ + 1} {name}: "
                      f"{one_round(server, upload, workers[round_ % len(workers)], args, workdir)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
