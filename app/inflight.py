"""What each worker of one ``cxr-serve`` has in flight, so that a lone image may use the whole machine.

With one worker per core, a worker's model runs on one thread: right under load, when every core is busy with
its own worker, but a lone image then leaves the other cores idle (the int8 model takes ~1.0 ms on one thread,
~0.5 ms on two). A worker that is alone, with nothing else in flight in any worker, runs its lone image on every
core (app/dataplane.py).

Each worker publishes its count (requests and images in flight) in one 8-byte slot of a small shared file in
the run directory (a slot is claimed with a lock file that the kernel releases when the worker dies; its
next worker to start zeroes it). A worker writes only its own slot, and an aligned 8-byte store is atomic, so no lock is
taken per request; reading every slot costs about a microsecond. Without a run directory (one process) there
are no others.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from app.rundir import run_dir, try_lock

SLOTS = 64  # CXR_WORKERS is at most 64
FILE = "inflight"


class InFlight:
    """This worker's requests and images in flight, published for the others; theirs, read."""

    def __init__(self, folder: Path | None) -> None:
        # in flight in this worker, touched on its event loop only: HTTP requests (any route) and images
        self.requests = 0
        self.images = 0
        self._map: mmap.mmap | None = None
        self._slots: memoryview | None = None
        self._slot = -1
        self._lock_fd: int | None = None
        self._single = folder is None
        if folder is not None:
            self._attach(folder)

    @property
    def count(self) -> int:
        """This worker's requests and images in flight: what it publishes."""
        return self.requests + self.images

    @property
    def slot(self) -> int:
        """This worker's slot among the workers (-1: one process, or more workers than slots)."""
        return self._slot

    @classmethod
    def from_env(cls) -> InFlight:
        return cls(run_dir())

    def _attach(self, folder: Path) -> None:
        for slot in range(SLOTS):
            fd = try_lock(folder / f"{FILE}-{slot}.lock")
            if fd is not None:
                self._slot, self._lock_fd = slot, fd
                break
        else:  # more workers than slots: this one publishes nothing and assumes the others are busy
            return
        fd = os.open(folder / FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * 8:
                os.ftruncate(fd, SLOTS * 8)  # zero-filled; several workers may do this at once, harmlessly
            self._map = mmap.mmap(fd, SLOTS * 8)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        self._slots[self._slot] = 0  # a dead predecessor's count is not ours
        for other in range(SLOTS):  # nor is any count in a slot nobody holds: a dead worker's, never cleared
            if other != self._slot and (fd := try_lock(folder / f"{FILE}-{other}.lock")) is not None:
                self._slots[other] = 0  # a worker takes its lock before it writes: none can be writing now
                os.close(fd)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One HTTP request in flight for the block (app.middleware), whatever its route."""
        self.requests += 1
        self._publish()
        try:
            yield
        finally:
            self.requests -= 1
            self._publish()

    @contextlib.contextmanager
    def image(self) -> Iterator[bool]:
        """One image in flight for the block; yields whether it is all this worker has to do: its only image,
        from its only HTTP request (or from none: the DICOM node)."""
        self.images += 1
        self._publish()
        try:
            yield self.images == 1 and self.requests <= 1
        finally:
            self.images -= 1
            self._publish()

    def _publish(self) -> None:
        if self._slots is not None:
            self._slots[self._slot] = self.count

    def others_busy(self) -> bool:
        """Whether another worker has a request or image in flight: never for a single process; always for a
        worker without a slot (more workers than slots), which cannot see the others."""
        if self._slots is None:
            return not self._single
        return sum(self._slots) != self._slots[self._slot]

    def close(self) -> None:
        if self._slots is not None and self._map is not None:
            self._slots.release()
            self._map.close()
            self._slots = self._map = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
