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


def _process_table() -> tuple[dict[int, int], dict[int, float]]:
    """(parent of each pid, user+system CPU seconds of each pid, all threads) from /proc."""
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
    return parents, cpu


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_pids(root: int) -> list[int]:
    """A process and all its live descendants (a multi-process server: supervisor, workers, helpers)."""
    return _descendants(root, _process_table()[0])


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU seconds of a process and all its live descendants (from /proc)."""
    parents, cpu = _process_table()
    return sum(cpu.get(pid, 0.0) for pid in _descendants(root, parents))


def _kib_fields(text: str, names: tuple[str, ...]) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            found[key] = int(rest.split()[0])
    return found


def process_memory(pid: int) -> dict | None:
    """RSS of one process, and PSS / USS (private pages only) where /proc/<pid>/smaps_rollup is readable, MiB.
    RSS counts the shared library and model pages in every process that maps them; PSS splits each shared page
    between its sharers (so PSS sums to the tree's real footprint); USS is what ending the process would free."""
    try:
        status = _kib_fields(Path(f"/proc/{pid}/status").read_text(), ("VmRSS",))
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    if "VmRSS" not in status:  # a zombie, or a kernel thread
        return None
    out: dict = {"pid": pid, "name": name, "rss_mb": round(status["VmRSS"] / 1024, 1)}
    with contextlib.suppress(OSError, ValueError):
        rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup").read_text(),
                             ("Pss", "Private_Clean", "Private_Dirty"))
        if "Pss" in rollup:
            out["pss_mb"] = round(rollup["Pss"] / 1024, 1)
            out["uss_mb"] = round((rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / 1024, 1)
    return out


def tree_memory(root: int) -> dict:
    """Memory of a process tree: RSS summed over every process (overcounts shared pages), PSS and USS summed
    where every process's smaps_rollup was readable (else absent), and each process's own figures."""
    processes = [m for m in (process_memory(pid) for pid in tree_pids(root)) if m is not None]
    out: dict = {"processes": processes, "rss_mb": round(sum(p["rss_mb"] for p in processes), 1)}
    for key in ("pss_mb", "uss_mb"):
        if processes and all(key in p for p in processes):
            out[key] = round(sum(p[key] for p in processes), 1)
    return out


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

    def batch_counters(self, reads: int = 4) -> tuple[float, float] | None:
        """(images, batches) so far, or None where the server does not count batches. Several uvicorn workers
        whose /metrics each show only their own counters answer different figures to back-to-back reads (each
        read a new connection, taken by any worker) while the server is idle: None then, rather than a delta
        between two workers' counters. Aggregated (or single-process) counters read alike every time."""
        if self.batch_stats == "metrics":
            seen = set()
            for _ in range(reads):
                text = http_get(self.url("/metrics"))[1]
                found = {m[0]: float(m[1]) for m in re.findall(r"^cxr_batch_size_(sum|count) (\S+)$", text, re.M)}
                if len(found) != 2:
                    return None
                seen.add((found["sum"], found["count"]))
            return seen.pop() if len(seen) == 1 else None
        if self.batch_stats == "file" and self.stats_file is not None:
            if not self.stats_file.exists():
                return (0.0, 0.0)
            fields = self.stats_file.read_text().split()
            return (float(fields[1]), float(fields[0])) if len(fields) == 2 else None
        return None

    def signal(self, sig: int) -> None:
        """To the whole server: its process group (our own session) and each process of its tree, for any
        worker that left the group (a SIGSTOP that missed one would let it run while another server is timed).

        A supervisor is stopped first and woken last: uvicorn's supervisor pings each worker every 0.5 s and kills one
        that has not answered within 5 s of wall time, and a stop longer than that, with the supervisor woken
        before the worker's answer, restarts a healthy worker (seen: a turn of 503 not_ready while it loaded)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        root = self.proc.pid
        if sig == signal.SIGCONT:
            for pid in tree_pids(root)[1:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(0.05)  # the workers' pong threads answer a ping sent before the stop
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(root, sig)
        for pid in tree_pids(root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        tree = tree_pids(self.proc.pid)
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
        for pid in tree[1:]:  # any that left the group, seconds ago: no time for the pid to be reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


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
        # the service's own default worker count (CXR_WORKERS unset) unless a run asks for one
        workers = getattr(args, "service_workers", None)
        if workers:
            env["CXR_WORKERS"] = str(workers)
        else:
            env.pop("CXR_WORKERS", None)
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
