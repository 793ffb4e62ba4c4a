"""The dynamic batcher: requests from many handlers, one model call per batch.

One worker thread blocks on a queue, takes the first item, keeps collecting until ``max_batch_size`` items or
``max_delay_s`` have passed, pads the batch to a power-of-two bucket (so a compiled function never retraces),
runs the model once and resolves each caller's future on its own event loop. A failing batch fails only its
own requests. The queue is bounded (back-pressure instead of unbounded memory); ``stop()`` refuses new work and
drains what is queued; a sentinel ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.errors import InferenceError, NotReadyError, OverloadedError

log = logging.getLogger("cxr.batching")

PredictFn = Callable[[np.ndarray], np.ndarray]
_STOP = object()


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
                 observer: BatchObserver | None = None, name: str = "batcher") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_limit = queue_limit
        self.buckets = bucket_sizes(max_batch_size)
        self.observer = observer or BatchObserver()
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending = 0  # items accepted and not yet taken into a batch
        self._lock = threading.Lock()
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

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish everything already accepted, then end the worker."""
        self._accepting = False
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- submitting ----------------------------------------------------------------------------------------
    def submit_nowait(self, x: np.ndarray) -> Future[BatchResult]:
        """Queue one input; returns a concurrent Future. Raises OverloadedError when the queue is full."""
        with self._lock:
            if not self._accepting:
                raise NotReadyError("the service is shutting down or not started")
            if self._pending >= self.queue_limit:
                raise OverloadedError(f"queue is full ({self.queue_limit} waiting); retry shortly",
                                      retry_after=1.0)
            self._pending += 1
            depth = self._pending
        item = _Item(x=x, future=Future())
        self._queue.put(item)
        self.observer.on_queue_depth(depth)
        return item.future

    async def submit(self, x: np.ndarray) -> BatchResult:
        return await asyncio.wrap_future(self.submit_nowait(x))

    # -- worker --------------------------------------------------------------------------------------------
    def _take(self) -> tuple[list[_Item], bool]:
        """Block for the first item, then collect until full or the delay since the first has passed."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch: list[_Item] = [first]  # type: ignore[list-item]
        deadline = time.monotonic() + self.max_delay_s
        stop = False
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)  # type: ignore[arg-type]
        with self._lock:
            self._pending -= len(batch)
            depth = self._pending
        self.observer.on_queue_depth(depth)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            if batch:
                self._run_batch(batch)
        # drain: anything queued after the sentinel was accepted before stop(); finish it too
        leftovers = [item for item in iter_queue(self._queue) if item is not _STOP]
        for start in range(0, len(leftovers), self.max_batch_size):
            self._run_batch(leftovers[start : start + self.max_batch_size])  # type: ignore[arg-type]

    def _run_batch(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        n = len(batch)
        try:
            x = np.stack([item.x for item in batch])
            padded = bucket_for(n, self.buckets)
            if padded > n:
                x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
            output = np.asarray(self.predict(x))
            if output.shape[0] != padded:
                raise InferenceError(f"model returned {output.shape[0]} outputs for {padded} inputs")
        except Exception as exc:
            log.error("batch of %d failed: %s", n, exc, exc_info=not isinstance(exc, InferenceError))
            failure = exc if isinstance(exc, InferenceError) else InferenceError("model inference failed")
            for item in batch:
                if not item.future.cancelled():
                    item.future.set_exception(failure)
            return
        inference_s = time.monotonic() - started
        self.observer.on_batch(n, inference_s)
        for i, item in enumerate(batch):
            if not item.future.cancelled():
                item.future.set_result(BatchResult(output=output[i], queue_s=started - item.enqueued,
                                                   inference_s=inference_s, batch_size=n))


def iter_queue(q: queue.Queue[object]) -> list[object]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
