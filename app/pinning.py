"""A worker per CPU, each on its own CPU while the others work too.

With a worker per CPU of the affinity mask (``CXR_WORKERS=auto`` on CPU), the supervisor names the CPUs in
``CXR_PIN_CPUS`` and each worker pins its threads to the CPU of its in-flight slot (app/inflight.py; a
replacement takes its dead predecessor's slot, so its CPU too). Left to the kernel, each worker's loop, decode and
batcher threads move between the CPUs and among the other worker's: pinned, a 2-CPU machine at 64 connections
gave x1.04-1.13 answers per second at full resolution with 2-8 % less CPU per answer (at 224x224, within its
noise: benchmarks/README.md).

A pinned worker could not use a CPU its peers leave idle: the kernel hands a burst of new connections to
whichever worker accepts first, and once one worker held all 64 of a benchmark's connections, pinned, it served
388 answers per second against ~640. So :class:`Placement` looks every 0.1 s: a worker with work while every
other worker is idle (three checks in a row) spreads its threads over every CPU, and pins them again once another
worker has work or it has none (three checks in a row: a busy worker's count is often zero between requests).

Threads inherit their creator's CPUs, so pinning the worker's threads early pins every thread it starts later.
The exception is the lone image's every-core interpreter (``TFLiteInt8Runtime.wide``): its pool is created
inside :func:`every_cpu`, with every CPU, and is left so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator

log = logging.getLogger("cxr.workers")

PIN_ENV = "CXR_PIN_CPUS"  # set by the supervisor: "0,1", the CPUs in slot order
CHECK_INTERVAL_S = 0.1
SETTLE_CHECKS = 3  # a placement changes after this many checks in a row call for it (0.3 s)
# "cpus": this process's CPUs before it pinned itself (absent: not pinned); "own": the CPU it pins to
_STATE: dict[str, set[int]] = {}
_EVERY_CPU_THREADS: set[int] = set()  # threads started inside every_cpu(): never pinned


def plan_pinning(workers: int, share: int, enabled: bool) -> str | None:
    """The value of CXR_PIN_CPUS for ``workers`` workers with ``share`` decode threads each, or None: pinned only
    when each worker is one CPU's share and the affinity mask has exactly one CPU per worker (a CPU quota below
    the mask leaves placement to the kernel: the CPUs the quota allows at any moment are not known)."""
    if not enabled or workers < 2 or share != 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return ",".join(map(str, cpus)) if len(cpus) == workers else None


def _threads() -> list[int]:
    return [int(task) for task in os.listdir("/proc/self/task")]


def _cpus_of(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except ProcessLookupError:  # it ended meanwhile
        return None


def _place(cpus: set[int]) -> None:
    """Every thread of this process so far (but the every-core pools) on ``cpus``; later ones inherit it."""
    for tid in _threads():
        if tid not in _EVERY_CPU_THREADS:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)


def pin_worker(slot: int, environ: dict[str, str] | None = None) -> int | None:
    """Pin every thread of this process to the CPU of ``slot`` in CXR_PIN_CPUS; that CPU, or None where the
    supervisor asked for no pinning (or the slot has no CPU: more workers than slots)."""
    value = (os.environ if environ is None else environ).get(PIN_ENV, "")
    cpus = [int(cpu) for cpu in value.split(",") if cpu.strip().isdigit()]
    if not 0 <= slot < len(cpus):
        return None
    cpu = cpus[slot]
    every = set(os.sched_getaffinity(0))
    try:
        _place({cpu})
    except OSError as exc:  # e.g. the container's CPUs changed since the supervisor looked: run unpinned
        with contextlib.suppress(OSError):
            _place(every)
        log.warning("worker not pinned to CPU %d: %s", cpu, exc)
        return None
    _STATE.update(cpus=every, own={cpu})
    log.info("worker pinned to CPU %d (CXR_PIN_WORKERS)", cpu)
    return cpu


def started_cpu_count() -> int | None:
    """How many CPUs this worker had before it pinned itself; None where it is not pinned."""
    every = _STATE.get("cpus")
    return len(every) if every is not None else None


@contextlib.contextmanager
def every_cpu() -> Iterator[None]:
    """Threads created inside may run on every CPU the worker started with, and are never pinned (a pool meant to
    use all of them)."""
    every = _STATE.get("cpus")
    if every is None:
        yield
        return
    own, before = os.sched_getaffinity(0), set(_threads())
    os.sched_setaffinity(0, every)
    try:
        yield
    finally:
        # the threads this one started meanwhile (they inherited every CPU), not those another thread started
        _EVERY_CPU_THREADS.update(tid for tid in set(_threads()) - before if _cpus_of(tid) == every)
        os.sched_setaffinity(0, own)


class Placement:
    """Whether a pinned worker's threads keep to its CPU (others have work too) or spread over every CPU (it has
    work and every other worker is idle). ``mine``: this worker's requests and images in flight; ``others_busy``:
    whether another worker has any (app/inflight.py)."""

    def __init__(self, mine: Callable[[], int], others_busy: Callable[[], bool], settle: int = SETTLE_CHECKS) -> None:
        self.mine = mine
        self.others_busy = others_busy
        self.settle = settle
        self.spread = False
        self._agreeing = 0  # consecutive checks that called for the other placement

    @property
    def active(self) -> bool:
        return "own" in _STATE

    def spread_cpus(self) -> int:
        """How many CPUs this worker's threads may use now, where it has spread over them; 0 otherwise."""
        return len(_STATE.get("cpus", ())) if self.spread and self.active else 0

    def update(self) -> None:
        if not self.active:
            return
        spread = self.mine() > 0 and not self.others_busy()
        self._agreeing = self._agreeing + 1 if spread != self.spread else 0
        if self._agreeing >= self.settle:  # counts read at one instant: a busy peer is often idle between requests
            try:
                _place(_STATE["cpus"] if spread else _STATE["own"])
            except OSError as exc:  # the CPUs changed under the worker: leave placement to the kernel from now on
                _STATE.clear()
                log.warning("worker placement stopped (left to the kernel): %s", exc)
                return
            self.spread, self._agreeing = spread, 0

    async def watch(self, interval: float = CHECK_INTERVAL_S) -> None:
        """Runs on the worker's event loop until cancelled (a pinned worker only)."""
        while self.active:
            self.update()
            await asyncio.sleep(interval)
