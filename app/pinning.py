"""A worker per CPU, each on its own CPU.

With a worker per CPU of the affinity mask (``CXR_WORKERS=auto`` on CPU), the supervisor names the CPUs in
``CXR_PIN_CPUS`` and each worker pins its threads to the one of its in-flight slot (app/inflight.py; a
replacement takes its dead predecessor's slot, so its CPU too). Left to the kernel, each worker's loop, decode and
batcher threads move between both CPUs and among the other worker's: pinned, a 2-CPU machine at 64 connections
gave x1.07-1.13 answers per second at full resolution and x1.02-1.08 at 224x224, with 3-8 % less CPU per answer
(benchmarks/README.md).

Threads inherit their creator's CPUs, so pinning the worker's threads early pins every thread it starts later.
The exception is the lone image's every-core interpreter (``TFLiteInt8Runtime.wide``): its pool is created
inside :func:`every_cpu`, with the CPUs the worker started with.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("cxr.workers")

PIN_ENV = "CXR_PIN_CPUS"  # set by the supervisor: "0,1", the CPUs in slot order
_STARTED_WITH: dict[str, set[int]] = {}  # "cpus": this process's CPUs before it pinned itself (absent: not pinned)


def plan_pinning(workers: int, share: int, enabled: bool) -> str | None:
    """The value of CXR_PIN_CPUS for ``workers`` workers with ``share`` decode threads each, or None: pinned only
    when each worker is one CPU's share and the affinity mask has exactly one CPU per worker (a CPU quota below
    the mask leaves placement to the kernel: the CPUs the quota allows at any moment are not known)."""
    if not enabled or workers < 2 or share != 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus)) if len(cpus) == workers else None


def pin_worker(slot: int, environ: dict[str, str] | None = None) -> int | None:
    """Pin every thread of this process to the CPU of ``slot`` in CXR_PIN_CPUS; that CPU, or None where the
    supervisor asked for no pinning (or the slot has no CPU: more workers than slots)."""
    value = (os.environ if environ is None else environ).get(PIN_ENV, "")
    cpus = [int(cpu) for cpu in value.split(",") if cpu.strip().isdigit()]
    if not 0 <= slot < len(cpus):
        return None
    cpu = cpus[slot]
    _STARTED_WITH.setdefault("cpus", set(os.sched_getaffinity(0)))
    for task in os.listdir("/proc/self/task"):  # the threads started so far; later ones inherit it
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), {cpu})
    log.info("worker pinned to CPU %d (CXR_PIN_WORKERS)", cpu)
    return cpu


def started_cpu_count() -> int | None:
    """How many CPUs this worker had before it pinned itself; None where it is not pinned."""
    every = _STARTED_WITH.get("cpus")
    return len(every) if every is not None else None


@contextlib.contextmanager
def every_cpu() -> Iterator[None]:
    """Threads created inside may run on every CPU the worker started with (a pool meant to use all of them)."""
    every = _STARTED_WITH.get("cpus")
    if every is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, every)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)
