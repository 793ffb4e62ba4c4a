"""The throughput ceilings of the load benchmark: the service's full per-image work without HTTP, on one core and
on every core.

Each worker is an ``inprocess.py`` process with its own model and gate, its runtime held to one thread
(``TF_NUM_INTRAOP_THREADS=1``: the int8 runtime then runs its images one after another on one interpreter, Keras
on one intra-op thread), started while the servers start and timed while every server is frozen. A window runs
decode + gate + preprocess of ``--max-batch-size`` images, then one model call on that batch, over and over:

- one thread: worker 0 alone;
- all cores: N = usable cores (``os.sched_getaffinity``) workers at once, each its own process, over the same
  wall window (a shared monotonic start and end; each stops at the first batch end past the end, so a window is
  longer by at most one batch), images/s summed over the workers.

Batches of the service's max batch size, not batch-1 calls: under load the service batches up to that size, and
that is never slower per image (the int8 runtime costs the same per image at any batch size, Keras less per
image in a batch), so the ceiling is the higher of the two. CPU per image is each window's process CPU time
(every thread) over its images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.servers import BENCH, REPO, Server, machine_busy_seconds

START_DELAY_S = 0.3  # every worker has read its line before the window opens


def summarize(results: list[dict]) -> dict:
    """One window's figures from its workers' reports: images/s summed over the workers, CPU ms per image."""
    images = sum(r["images"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {"processes": len(results), "images": images,
            "images_per_s": round(sum(r["images"] / r["wall_s"] for r in results if r["wall_s"] > 0), 2),
            "cpu_ms_per_image": round(1000 * cpu / images, 3) if images else None,
            "wall_s": round(max(r["wall_s"] for r in results), 3), "cpu_s": round(cpu, 3),
            "per_process": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "upload"}
                            for r in results]}


def inprocess_argv(uploads: list[tuple[str, Path]], *, store: str, name: str, version: str | None,
                   batch_size: int, runtime: str, budget_s: float = 3.0) -> list[str]:
    """The command line of an ``inprocess.py`` process (a ceiling worker, or load.py's in-process figures)."""
    return [sys.executable, str(BENCH / "inprocess.py"), "--store", store, "--name", name, "--max-batch-size",
            str(batch_size), "--budget-s", f"{budget_s:g}", "--runtime", runtime,
            *(["--version", version] if version else []), *(f"{label}={path}" for label, path in uploads)]


class CeilingWorkers:
    def __init__(self, argv: list[str], count: int) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "OMP_NUM_THREADS": "1"}
        self.procs = [subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       env=env) for _ in range(count)]

    def ready(self) -> bool:
        return all(p.stdout is not None and p.stdout.readline().strip() == "ready" for p in self.procs)

    def window(self, label: str, seconds: float, count: int) -> dict:
        start = time.monotonic() + START_DELAY_S
        procs = self.procs[:count]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"ceiling {label} {start} {start + seconds}\n")
            p.stdin.flush()
        return summarize([json.loads(p.stdout.readline()) for p in procs if p.stdout is not None])

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def measure_ceilings(workers: CeilingWorkers, servers: list[Server], labels: list[str], seconds: float,
                     batch_size: int) -> dict:
    """Both ceilings for every upload while every server is frozen, with the CPU other work used meanwhile."""
    for server in servers:
        server.signal(signal.SIGSTOP)
    uploads, busy, cpu, wall = {}, machine_busy_seconds(), 0.0, 0.0
    for label in labels:
        one = workers.window(label, seconds, 1)
        every = workers.window(label, seconds, len(workers.procs))
        uploads[label] = {"one_thread": one, "all_cores": every}
        cpu += one["cpu_s"] + every["cpu_s"]
        wall += one["wall_s"] + every["wall_s"] + 2 * START_DELAY_S
    other = max(0.0, machine_busy_seconds() - busy - cpu) / wall
    print(f"in-process ceilings measured ({wall:.1f} s, other cpu {other:.2f})", flush=True)
    return {"processes": len(workers.procs), "batch_size": batch_size, "window_s": seconds,
            "work": "decode + gate + preprocess per image, one model call per batch, runtime on one thread per "
                    "process", "uploads": uploads, "other_cpu_cores": round(other, 3)}
