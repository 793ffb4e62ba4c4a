"""Two cxr-serve configurations against each other in one run (the A/B loop the overhead benchmarks share).

The servers take turns under the same wrk load (the idle one frozen with SIGSTOP), in ABBA order over several
rounds so slow drifts of a shared machine cancel; each turn records req/s and the server's CPU per answer
(steadier than req/s on a busy machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import make_upload, pick_uploads, run_wrk
from benchmarks.servers import REPO, Server, machine_busy_seconds, tree_cpu_seconds

# what every server of an A/B run shares: quiet logs, loopback, a short drain
BASE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "CXR_HOST": "127.0.0.1", "CXR_LOG_LEVEL": "warning",
            "CXR_ACCESS_LOG": "false", "CXR_GRACEFUL_TIMEOUT": "10"}


def service_env(settings: list[str]) -> dict[str, str]:
    """The environment of a cxr-serve under test: this one, the benchmarks' base settings, this checkout's model
    store (unless CXR_MODEL_STORE names another), then ``settings`` (NAME=VALUE items)."""
    return {**os.environ, **BASE_ENV, "CXR_MODEL_STORE": os.environ.get("CXR_MODEL_STORE", str(REPO / "model_store")),
            **dict(item.split("=", 1) for item in settings)}


def load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=os.environ.get("CXR_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--upload", choices=("224", "fullres"), default="224")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)


def prepare(args: argparse.Namespace, prefix: str) -> tuple[Path, Any]:
    """A work folder and the upload the arguments name."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    label, path = pick_uploads(Path(args.data), None, None)[0 if args.upload == "224" else 1]
    return workdir, make_upload(label, path, workdir)


def start(name: str, port: int, env: dict[str, str], workdir: Path) -> Server:
    python = Path(sys.executable)
    serve = python.with_name("cxr-serve")
    argv = [str(serve)] if serve.exists() else [str(python), "-m", "app.cli"]
    server = Server(name, argv, env, port, "/health/ready", workdir / f"{name}.log", batch_stats="metrics")
    server.start()
    return server


def wait_ready(servers: dict[str, Server], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not all(s.poll_ready() for s in servers.values()):
        if time.monotonic() > deadline:
            sys.exit(f"servers not ready after {timeout:.0f} s")
        time.sleep(0.5)


def alternate(servers: dict[str, Server], upload: Any, *, connections: int, duration: int, warmup: int,
              rounds: int, workdir: Path, p50_ms: dict[str, list[float]] | None = None,
              other_cores: dict[str, list[float]] | None = None
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """req/s and server CPU-ms per answer of each server, one entry per round (and wrk's p50 latency in ms into
    ``p50_ms``, the cores everything else on the machine used meanwhile into ``other_cores``, where given)."""
    results: dict[str, list[float]] = {name: [] for name in servers}
    cpu_ms: dict[str, list[float]] = {name: [] for name in servers}
    if p50_ms is not None:
        p50_ms.update({name: [] for name in servers})
    if other_cores is not None:
        other_cores.update({name: [] for name in servers})
    for round_no in range(rounds):
        order = list(servers) if round_no % 2 == 0 else list(reversed(servers))  # ABBA: drifts cancel
        for name in order:
            server = servers[name]
            others = [s for n, s in servers.items() if n != name]
            for other in others:
                other.signal(signal.SIGSTOP)
            try:
                url = server.url("/predict")
                run_wrk(url, upload, connections=connections, seconds=warmup, threads=1, workdir=workdir)
                time.sleep(0.3)
                assert server.proc is not None
                cpu_before = tree_cpu_seconds(server.proc.pid)
                busy_before = machine_busy_seconds()
                load = run_wrk(url, upload, connections=connections, seconds=duration, threads=1, workdir=workdir)
                busy = machine_busy_seconds() - busy_before
                # over wrk's window only: what the rest of the machine did while this server was measured
                cpu_in_window = tree_cpu_seconds(server.proc.pid) - cpu_before
                elsewhere = max(0.0, busy - cpu_in_window - load["cpu_s"]) / (load["duration_us"] / 1e6)
                time.sleep(0.3)  # the last batch (and any background writer) is counted too
                cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
            finally:
                for other in others:
                    other.signal(signal.SIGCONT)
            ok = sum(n for status, n in load["statuses"].items() if str(status).startswith("2"))
            bad = {k: v for k, v in load["statuses"].items() if not str(k).startswith("2")}
            results[name].append(ok / (load["duration_us"] / 1e6))
            cpu_ms[name].append(1000 * cpu / max(ok, 1))
            p50 = load["latency_us"]["percentiles"]["50"] / 1000
            if p50_ms is not None:
                p50_ms[name].append(p50)
            if other_cores is not None:
                other_cores[name].append(elsewhere)
            print(f"  round {round_no + 1} {name:12s} {results[name][-1]:8.1f} req/s {cpu_ms[name][-1]:7.2f} "
                  f"CPU-ms/request  p50 {p50:7.2f} ms  server {cpu / (load['duration_us'] / 1e6):.2f} cores  "
                  f"other {elsewhere:.2f} cores"
                  + (f"  non-2xx {bad}" if bad else ""))
    return results, cpu_ms


def run_turns(servers: dict[str, Server], upload: Any, args: argparse.Namespace, workdir: Path, *, note: str = "",
              p50_ms: dict[str, list[float]] | None = None, other_cores: dict[str, list[float]] | None = None
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The header every A/B script prints, then :func:`alternate` with the shared load arguments."""
    print(f"upload {upload.label} ({upload.path.name}), {args.connections} connections, {args.duration} s x "
          f"{args.rounds} rounds" + (f", {note}" if note else ""))
    return alternate(servers, upload, connections=args.connections, duration=args.duration, warmup=args.warmup,
                     rounds=args.rounds, workdir=workdir, p50_ms=p50_ms, other_cores=other_cores)


def compare(settings: dict[str, dict[str, str]], upload: Any, args: argparse.Namespace, workdir: Path, *,
            base_env: dict[str, str] | None = None, note: str = "", log_prefix: str = ""
            ) -> tuple[dict[str, float], dict[str, float]]:
    """One server per named set of settings (on top of the environment, :data:`BASE_ENV` and ``base_env``, each on
    a free port; its log ``<log_prefix><name>.log`` in ``workdir``), the A/B turns of :func:`run_turns`, the servers
    stopped; each one's median req/s and median server CPU-ms per answer."""
    from benchmarks.servers import free_ports

    common = {**os.environ, **BASE_ENV, **(base_env or {})}
    servers: dict[str, Server] = {}
    try:
        for (name, env), port in zip(settings.items(), free_ports(len(settings)), strict=True):
            log_name = log_prefix + name.replace(" ", "-")
            servers[name] = start(log_name, port, {**common, **env, "CXR_PORT": str(port)}, workdir)
        wait_ready(servers)
        results, cpu_ms = run_turns(servers, upload, args, workdir, note=note)
    finally:
        for server in servers.values():
            server.stop()
    return ({name: statistics.median(values) for name, values in results.items()},
            {name: statistics.median(values) for name, values in cpu_ms.items()})
