"""How many uvicorn worker processes to run (``CXR_WORKERS``), and each one's share of the cores.

On CPU one process is GIL-bound (about 1.4 of 2 cores); several processes use every core. ``auto`` = the CPUs
this process may use (its affinity mask, further limited by a cgroup v2 ``cpu.max`` quota, e.g. a Kubernetes
CPU limit), at most ``AUTO_MAX`` because each worker holds its own model copy (~0.9 GiB RSS), and 1 where a GPU
is to be used (one process feeds a GPU best; several would each take its memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

AUTO_MAX = 8
MAX_WORKERS = 64
GPU_RUNTIMES = {"keras-fp16"}  # runtimes that only run on a GPU
SHARED_THREADS = ("CXR_DECODE_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    cores: int  # the cores the workers share (affinity, limited by the quota)
    reason: str  # said in the start-up log


def parse_workers(value: object) -> int | str:
    """``auto`` or an integer 1-64; ValueError saying what a correct value looks like."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"must be auto or an integer 1-{MAX_WORKERS}, e.g. auto or 2, got {value!r}")
    return int(text)


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup"),
              proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` (quota / period) on this process's cgroup and its ancestors, the
    smallest; None when there is no quota (``max``) or no cgroup v2 here."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    folder = cgroup_root / own.strip().lstrip("/")
    quotas: list[float] = []
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass  # no cpu.max at this level (the root has none), or not cgroup v2
        if folder == cgroup_root or cgroup_root not in folder.parents:
            break
        folder = folder.parent
    return min(quotas) if quotas else None


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """The affinity mask's CPU count, limited by the quota (rounded down), at least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = affinity if quota is None else min(affinity, math.floor(quota))
    return max(1, cpus)


def gpu_wanted(device: str, runtime: str, environ: dict[str, str] | None = None,
               nvidia_device: Path = Path("/dev/nvidia0")) -> str | None:
    """Why a GPU is to be used, or None. Decided without importing TensorFlow (the supervisor stays light)."""
    env = os.environ if environ is None else environ
    if device == "cpu":
        return None
    if device == "gpu":
        return "CXR_DEVICE=gpu"
    if runtime in GPU_RUNTIMES:
        return f"CXR_RUNTIME={runtime} runs on a GPU"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # set: it decides ("" or -1 hides every GPU from CUDA)
        return f"CUDA_VISIBLE_DEVICES={visible}" if visible.strip() and not visible.strip().startswith("-") else None
    if nvidia_device.exists():
        return f"an NVIDIA device is visible ({nvidia_device})"
    return None


def plan_workers(requested: int | str, device: str, runtime: str, *, cores: int | None = None,
                 environ: dict[str, str] | None = None, nvidia_device: Path = Path("/dev/nvidia0")) -> WorkerPlan:
    """The number of worker processes for ``requested`` (``auto`` or a number), with the reason."""
    if cores is None:
        quota = cpu_quota()
        cores = usable_cpus(quota=quota)
        where = f"{cores} usable CPU(s)" + (f" (cgroup quota {quota:g})" if quota is not None else "")
    else:
        where = f"{cores} usable CPU(s)"
    if requested != "auto":
        return WorkerPlan(int(requested), cores, f"CXR_WORKERS={requested}")
    gpu = gpu_wanted(device, runtime, environ, nvidia_device)
    if gpu is not None:
        return WorkerPlan(1, cores, f"auto: 1 because a GPU is to be used ({gpu})")
    workers = min(cores, AUTO_MAX)
    capped = f", capped at {AUTO_MAX} (each worker holds its own model copy)" if cores > AUTO_MAX else ""
    return WorkerPlan(workers, cores, f"auto: {where}{capped}")


def thread_share(cores: int, workers: int) -> int:
    """Each worker's fair share of the cores for its own thread pools (decode, TFLite/TensorFlow compute)."""
    return max(1, min(MAX_WORKERS, cores // workers))  # 64: the most CXR_DECODE_THREADS accepts


def share_environment(plan: WorkerPlan, environ: dict[str, str]) -> dict[str, str]:
    """The thread-pool variables to set for the workers, leaving any the user set alone: decode threads
    (CXR_DECODE_THREADS) and compute threads (TF_NUM_INTRAOP_THREADS, read by TensorFlow and the TFLite
    runtime). Without it every worker would size its pools for every core (and, in a container, for the
    host's cores, not its CPU quota) and they would fight over them."""
    share = str(thread_share(plan.cores, plan.workers))
    return {name: share for name in SHARED_THREADS if not environ.get(name)}
