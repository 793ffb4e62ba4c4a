"""The run directory the worker processes of one ``cxr-serve`` share: created by the supervisor before the workers
start, named to them in ``CXR_RUN_DIR``, removed at exit. Unset (one process): nothing is shared.

It holds the Prometheus multiprocess files, each worker's state and the model target (app.worker_sync), the
workers' in-flight counts (app.inflight), the rate-limit buckets (app.access.ratelimit) and the lock files below.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

RUN_DIR_ENV = "CXR_RUN_DIR"
METRICS_SUBDIR = "metrics"


def run_dir() -> Path | None:
    """This worker's shared run directory, or None when it is the only process."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


@contextlib.contextmanager
def created_run_dir() -> Iterator[Path]:
    """A fresh private directory (0700) for one supervisor's workers, removed when the supervisor exits."""
    path = Path(tempfile.mkdtemp(prefix="cxr-serve-"))
    try:
        (path / METRICS_SUBDIR).mkdir()
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """Holds an exclusive ``fcntl`` lock on ``path`` (blocking); no lock at all where ``path`` is None (one
    process). The kernel releases it if the holder dies, so a killed worker never leaves it taken."""
    if path is None:
        yield
        return
    fd = try_lock(path, blocking=True)
    assert fd is not None  # a blocking lock waits instead of failing
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(path: Path, blocking: bool = False) -> int | None:
    """Takes an exclusive lock on ``path`` for as long as the returned descriptor stays open (the holder's
    life); None when another process holds it (``blocking=False``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_path(name: str) -> Path | None:
    """``<run dir>/<name>.lock``, or None with no run directory."""
    folder = run_dir()
    return folder / f"{name}.lock" if folder is not None else None
