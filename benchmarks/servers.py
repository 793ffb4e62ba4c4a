"""The servers under test, each its own process (session) on a free loopback port, and CPU accounting."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU seconds of a process and all its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def machine_busy_seconds() -> float:
    """CPU seconds spent on anything (all cores, not idle or iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log: Path
    batch_stats: str = "none"  # "metrics" (Prometheus cxr_batch_size), "file" (LitServe API's counter file)
    stats_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def poll_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n{tail}")
        try:
            return http_get(self.url(self.ready_path), timeout=2)[0] == 200
        except OSError:
            return False

    def batch_counters(self) -> tuple[float, float] | None:
        """(images, batches) so far, or None where the server does not count batches."""
        if self.batch_stats == "metrics":
            text = http_get(self.url("/metrics"))[1]
            found = {m[0]: float(m[1]) for m in re.findall(r"^cxr_batch_size_(sum|count) (\S+)$", text, re.M)}
            return (found["sum"], found["count"]) if len(found) == 2 else None
        if self.batch_stats == "file" and self.stats_file is not None:
            if not self.stats_file.exists():
                return (0.0, 0.0)
            fields = self.stats_file.read_text().split()
            return (float(fields[1]), float(fields[0])) if len(fields) == 2 else None
        return None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # our own session: the server and its workers

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: the server and its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # LitServe's workers may outlive their parent for a moment
        time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def build_servers(args: argparse.Namespace, workdir: Path) -> list[Server]:
    python = sys.executable
    serve = Path(python).with_name("cxr-serve")
    serve_argv = [str(serve)] if serve.exists() else [python, "-m", "app.cli"]
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

    def service_env(port: int, batch: int) -> dict[str, str]:
        env = {**base_env, "CXR_HOST": "127.0.0.1", "CXR_PORT": str(port), "CXR_MODEL_STORE": args.model_store,
               "CXR_MODEL_NAME": args.model_name, "CXR_MAX_BATCH_SIZE": str(batch),
               "CXR_MAX_DELAY_MS": str(args.delay_ms), "CXR_LOG_LEVEL": "warning", "CXR_GRACEFUL_TIMEOUT": "5",
               "CXR_RUNTIME": args.runtime}
        if args.model_version:
            env["CXR_MODEL_VERSION"] = args.model_version
        else:
            env.pop("CXR_MODEL_VERSION", None)
        return env

    wanted = args.targets.split(",")
    ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
    servers = []
    for name in wanted:
        port, log = ports[name], workdir / f"{name}.log"
        if name in ("service", "nobatch"):
            batch = args.max_batch_size if name == "service" else 1
            servers.append(Server(name, serve_argv, service_env(port, batch), port, "/health/ready", log,
                                  batch_stats="metrics"))
        elif name == "ceiling":
            argv = [python, "-m", "uvicorn", "benchmarks.http_ceiling:app", "--host", "127.0.0.1", "--port",
                    str(port), "--no-access-log", "--log-level", "warning"]
            servers.append(Server(name, argv, base_env, port, "/health", log))
        elif name == "litserve":
            stats = workdir / "litserve-stats.txt"
            argv = [python, str(BENCH / "litserve_server.py"), "--port", str(port), "--store", args.model_store,
                    "--name", args.model_name, "--max-batch-size", str(args.max_batch_size),
                    "--delay-ms", str(args.delay_ms), "--stats", str(stats)]
            if args.model_version:
                argv += ["--version", args.model_version]
            if args.litserve_fast_queue:
                argv.append("--fast-queue")
            argv += ["--runtime", args.litserve_runtime]
            servers.append(Server(name, argv, base_env, port, "/health", log, batch_stats="file",
                                  stats_file=stats))
        elif name == "naive":
            argv = [python, str(BENCH / "naive_server.py"), "--port", str(port), "--store", args.model_store,
                    "--name", args.model_name, *(["--version", args.model_version] if args.model_version else [])]
            servers.append(Server(name, argv, base_env, port, "/health", log))
        else:
            sys.exit(f"unknown target {name!r}; choose from service, nobatch, ceiling, litserve, naive")
    return servers
