"""The dynamic batcher: requests from many handlers, one model call per batch.

One worker thread blocks on a queue, takes the first item, keeps collecting until ``max_batch_size`` items or
``max_delay_s`` have passed, pads the batch to a power-of-two bucket (so a compiled function never retraces),
runs the model once and resolves each caller's future on its own event loop. A failing batch fails only its
own requests. The queue is bounded (back-pressure instead of unbounded memory); ``stop()`` refuses new work and
drains what is queued; a sentinel ends the loop.

Waiting for more items only pays when more are on their way, so callers announce work they are still preparing
(``with batcher.expecting():`` around decode and submit): the worker waits up to ``max_delay_s`` while the queue
is empty only if something is announced, and otherwise runs at once. Submitting inside ``expecting()`` turns the
announcement into the queued item in one step (under one lock, waking the worker), so a request never waits for
itself: a lone request runs as soon as it is queued, as with batching off, while under load batches still fill
(items also accumulate while the previous batch runs).

A lone request can skip the worker thread altogether: ``submit_or_run`` (called in the thread that prepared the
input) runs it at once in that thread when the batcher is idle: nothing queued, the worker not running a batch,
and no other caller announced. That saves two thread hand-offs (to the worker and back) on a lone request's
path. It is the same batch of one the worker would run (same predict, output check, failure isolation and
metrics hooks), and the model still runs one call at a time: the worker waits for an inline call to finish
before it runs its next batch, and ``stop()`` waits for one in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from app.errors import InferenceError, InvalidInputError, NotReadyError, OverloadedError

log = logging.getLogger("cxr.batching")

PredictFn = Callable[[np.ndarray], np.ndarray]
_STOP = object()


class Announcement:
    """One ``expecting()`` block: open until its item is submitted (or the block ends without one)."""

    __slots__ = ("batcher", "open")

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self.open = True


# the caller's current announcement: contextvars follow an asyncio task, so concurrent requests keep theirs apart
_ANNOUNCED: contextvars.ContextVar[Announcement | None] = contextvars.ContextVar("cxr_announced", default=None)


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including max_batch_size (which is itself a bucket even if not a power)."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def bucket_for(n: int, buckets: list[int]) -> int:
    return next(size for size in buckets if size >= n)


@dataclass
class BatchResult:
    output: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    x: np.ndarray
    future: Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchObserver:
    """Hooks for metrics; no-ops by default so the batcher stays testable on its own."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


class DynamicBatcher:
    def __init__(self, predict: PredictFn, *, max_batch_size: int, max_delay_s: float, queue_limit: int,
                 input_shape: tuple[int, ...] | None = None, observer: BatchObserver | None = None,
                 name: str = "batcher", pad: bool = True, wide: PredictFn | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        # a plain attribute, read once per batch: tests and fault injection may wrap it
        self.predict = predict
        self.wide = wide  # the runtime's every-core predict, for a lone image (Runtime.wide)
        # one input of the wrong shape would fail np.stack for the whole batch: refuse it at submit instead
        self.input_shape = input_shape
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_limit = queue_limit
        self.buckets = bucket_sizes(max_batch_size)
        # pad to a bucket (a compiled function per size); False for runtimes that take any size
        self.pad = pad
        self.observer = observer or BatchObserver()
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending = 0  # items accepted and not yet taken into a batch
        self._expected = 0  # items announced by callers still preparing them
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an item queued or an announcement withdrawn
        # a model call in progress (the worker's batch or an inline one): one at a time, under _lock
        self._busy = False
        self._idle = threading.Condition(self._lock)  # _busy went False
        self._accepting = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._accepting and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._pending

    @property
    def expected(self) -> int:
        return self._expected

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish everything already accepted, then end the worker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:  # under the lock: every accepted item is queued before the sentinel
            was_accepting, self._accepting = self._accepting, False
            if was_accepting:
                self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._idle:  # an inline call accepted before the stop finishes too
            while self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._idle.wait(remaining)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Announcement]:
        """Announce one item the caller is still preparing (decoding), so the worker waits for it. The first
        ``submit_nowait`` inside the block redeems the announcement; leaving without one withdraws it. The
        announcement is yielded for callers that submit from another thread (contextvars do not follow
        ``run_in_executor``): pass it to ``submit_nowait`` / ``submit_or_run``."""
        announcement = Announcement(self)
        with self._lock:
            self._expected += 1
        token = _ANNOUNCED.set(announcement)
        try:
            yield announcement
        finally:
            _ANNOUNCED.reset(token)
            with self._lock:
                if announcement.open:
                    announcement.open = False
                    self._expected -= 1
                    self._changed.notify()

    # -- submitting ----------------------------------------------------------------------------------------
    def _check_shape(self, x: np.ndarray) -> None:
        if self.input_shape is not None and tuple(x.shape) != tuple(self.input_shape):
            raise InvalidInputError(f"input shape {list(x.shape)} does not match the model input "
                                    f"{list(self.input_shape)}")

    def _redeem(self, announcement: Announcement | None) -> None:
        """Under _lock: the caller's announcement (given, or its context's) is now this item."""
        announcement = announcement if announcement is not None else _ANNOUNCED.get()
        if announcement is not None and announcement.batcher is self and announcement.open:
            announcement.open = False  # this item is what was announced: nothing more to wait for
            self._expected -= 1

    def submit_nowait(self, x: np.ndarray, announcement: Announcement | None = None) -> Future[BatchResult]:
        """Queue one input; returns a concurrent Future. Raises OverloadedError when the queue is full."""
        self._check_shape(x)
        item = _Item(x=x, future=Future())
        with self._lock:
            if not self._accepting:
                raise NotReadyError("the service is shutting down or not started")
            if self._pending >= self.queue_limit:
                raise OverloadedError(f"queue is full ({self.queue_limit} waiting); retry shortly",
                                      retry_after=1.0)
            self._pending += 1
            depth = self._pending
            self._queue.put(item)  # unbounded queue: never blocks; the limit is _pending
            self._redeem(announcement)
            self._changed.notify()
        self.observer.on_queue_depth(depth)
        return item.future

    def submit_or_run(self, x: np.ndarray, announcement: Announcement | None = None, *,
                      wide: bool = False) -> Future[BatchResult]:
        """Like ``submit_nowait``, but when the batcher is idle (nothing queued, no batch running, no other
        caller announced) the input runs at once in the calling thread, as a batch of one, and the returned
        Future is already resolved; with ``wide``, on the runtime's every-core predict where it has one. The
        model call blocks: call it from an event loop only for a lone image (app/dataplane.py)."""
        self._check_shape(x)
        with self._lock:
            own = announcement if announcement is not None else _ANNOUNCED.get()
            own_open = own is not None and own.batcher is self and own.open
            others_announced = self._expected - (1 if own_open else 0)
            inline = self._accepting and not self._busy and self._pending == 0 and others_announced == 0
            if inline:
                self._busy = True  # the worker waits for this call before it runs a batch
                self._redeem(own)
                self._changed.notify()
        if not inline:
            return self.submit_nowait(x, announcement)
        item = _Item(x=x, future=Future())
        try:
            self._run_batch_safely([item], self.wide if wide else None)
        finally:
            self._release_model()
        return item.future

    async def submit(self, x: np.ndarray) -> BatchResult:
        return await asyncio.wrap_future(self.submit_nowait(x))

    # -- worker --------------------------------------------------------------------------------------------
    def _take(self) -> tuple[list[_Item], bool]:
        """Block for the first item, then collect until full or the delay since the first has passed; stop
        early when the queue is empty and no caller has announced more."""
        first = self._queue.get()
        if first is _STOP:
            return [], True  # nothing taken, the model not claimed
        batch: list[_Item] = [first]  # type: ignore[list-item]
        deadline = time.monotonic() + self.max_delay_s
        stop = False
        while len(batch) < self.max_batch_size:
            with self._changed:  # wait only while the queue is empty and someone is still decoding
                while self._queue.empty() and self._expected > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)  # type: ignore[arg-type]
        with self._lock:
            # wait for an inline call first: meanwhile the taken items still count against the queue limit,
            # and no inline call starts between taking them and running them
            self._claim_model()
            self._pending -= len(batch)
            depth = self._pending
        self.observer.on_queue_depth(depth)
        return batch, stop

    def _claim_model(self) -> None:
        """Under _lock: wait for an inline call to finish, then mark the model busy (one call at a time)."""
        while self._busy:
            self._idle.wait()
        self._busy = True

    def _release_model(self) -> None:
        with self._lock:
            self._busy = False
            self._idle.notify_all()

    def _run_exclusive(self, batch: list[_Item]) -> None:
        """Run a batch the worker has claimed the model for, then release it."""
        try:
            self._run_batch_safely(batch)
        finally:
            self._release_model()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            if batch:
                self._run_exclusive(batch)
        # defensive: stop() queues the sentinel after every accepted item, so nothing should be left
        leftovers = [item for item in iter_queue(self._queue) if item is not _STOP]
        for start in range(0, len(leftovers), self.max_batch_size):
            with self._lock:
                self._claim_model()
            self._run_exclusive(leftovers[start : start + self.max_batch_size])  # type: ignore[arg-type]

    def _run_batch_safely(self, batch: list[_Item], predict: PredictFn | None = None) -> None:
        """The worker thread must outlive any bug in a batch (or in a metrics hook): a dead worker would leave
        every later request waiting forever."""
        try:
            self._run_batch(batch, predict)
        except Exception as exc:
            log.exception("batcher bug while finishing a batch of %d", len(batch))
            for item in batch:
                _resolve(item.future, exception=InferenceError(f"internal batching error: {type(exc).__name__}"))

    def _run_batch(self, batch: list[_Item], predict: PredictFn | None = None) -> None:
        # Claim each future; one cancelled meanwhile (client gone) is stale work and is dropped here.
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.monotonic()
        n = len(batch)
        try:
            x = np.stack([item.x for item in batch])
            padded = bucket_for(n, self.buckets) if self.pad else n
            if padded > n:
                x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
            output = np.asarray((predict or self.predict)(x))
            if output.shape[0] != padded:
                raise InferenceError(f"model returned {output.shape[0]} outputs for {padded} inputs")
        except Exception as exc:
            log.error("batch of %d failed: %s", n, exc, exc_info=not isinstance(exc, InferenceError))
            failure = exc if isinstance(exc, InferenceError) else InferenceError("model inference failed")
            for item in batch:
                _resolve(item.future, exception=failure)
            return
        inference_s = time.monotonic() - started
        for i, item in enumerate(batch):
            _resolve(item.future, BatchResult(output=output[i], queue_s=started - item.enqueued,
                                              inference_s=inference_s, batch_size=n))
        self.observer.on_batch(n, inference_s)


def _resolve(future: Future[BatchResult], result: BatchResult | None = None,
             exception: BaseException | None = None) -> None:
    with contextlib.suppress(InvalidStateError):  # already resolved
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]


def iter_queue(q: queue.Queue[object]) -> list[object]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
