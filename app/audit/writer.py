"""The background writer: requests only enqueue (non-blocking); one thread inserts in batches.

The buffer is bounded: while the store is down it holds up to ``capacity`` rows and retries; beyond that a row
is not stored, and that is counted (``cxr_audit_records_dropped_total{reason}``) and logged, never silent.
A row that the store rejects on its own (not an outage) is retried alone and dropped (counted) if it still fails.

Durable mode (``commit``): the producer gets a future that completes once its row is committed. The thread
takes everything waiting (up to ``batch_size``) into one transaction and then releases all its waiters: group
commit, so 64 concurrent answers cost about one commit, not 64.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError

from app.audit import store
from app.audit.models import RECORD_COLUMNS, AuditRecord
from app.rundir import file_lock, lock_path

log = logging.getLogger("cxr.audit")

Row = dict[str, Any]
MIGRATE_LOCK = "audit-migrate"  # the workers' first touches of the store, one at a time (also AuditService)
Waiter = Future[None]


class RecordNotStored(Exception):
    """A durable row that will not be committed (store rejected it, buffer full, shut down)."""
OUTAGE_ERRORS = (OperationalError, DisconnectionError)


def full_rows(batch: list[Row]) -> list[Row]:
    """Every row with every column: an executemany takes its columns from the FIRST row and would silently drop
    the others' extra keys (an answer's model fields after a refusal that has none)."""
    return [{column: row.get(column) for column in RECORD_COLUMNS} for row in batch]


def is_outage(exc: BaseException) -> bool:
    """Connection-level failures (store down, network, locked) are retried; data errors are not."""
    if isinstance(exc, OUTAGE_ERRORS):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class WriterStats:
    """Hooks to the metrics, so the writer is tested without Prometheus."""

    def __init__(self, on_written: Callable[[int], None] | None = None,
                 on_dropped: Callable[[str, int], None] | None = None,
                 on_state: Callable[[bool, int], None] | None = None) -> None:
        self.on_written = on_written or (lambda n: None)
        self.on_dropped = on_dropped or (lambda reason, n: None)
        self.on_state = on_state or (lambda up, buffered: None)


class AuditWriter:
    def __init__(self, engine: Engine, *, capacity: int = 10_000, batch_size: int = 500, linger_s: float = 0.05,
                 retry_s: float = 1.0, ping_s: float = 2.0, stats: WriterStats | None = None,
                 migrate: bool = True) -> None:
        self.engine = engine
        self.capacity = capacity
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.ping_s = ping_s
        self.stats = stats or WriterStats()
        self.migrate = migrate
        # (row, waiter): the waiter is None for buffered rows, a Future for durable ones
        self._buffer: collections.deque[tuple[Row, Waiter | None]] = collections.deque()
        self._inflight: list[tuple[Row, Waiter | None]] = []  # taken by the thread, not yet settled
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.store_up = False  # set by the thread: schema at head and the last write or ping succeeded
        self.migrated = False
        self.last_error: str | None = None
        self.written = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._accepted = 0  # rows ever enqueued (the flush target)
        self._done = 0  # rows written or dropped

    # -- producers (request handlers): never block on the store --------------------------------------------
    def enqueue(self, row: Row, *, reserved: bool = False) -> bool:
        """Buffered: the row is written soon; the caller does not wait. ``reserved``: the row a ``reserve()``
        promised."""
        return self._put(row, None, reserved=reserved)

    def reserve(self) -> None:
        """Promises one buffered row, made a moment later (after its answer has left): counted from now, so a
        flush begun in between waits for it. Redeemed by ``enqueue(row, reserved=True)`` or ``abandon``."""
        with self._lock:
            self._accepted += 1

    def abandon(self, reason: str) -> None:
        """The promised row will not come: counted as dropped (a flush stops waiting for it)."""
        with self._lock:
            self._done += 1
            self._idle.notify_all()
        self._drop(reason, 1)

    def commit(self, row: Row) -> Waiter:
        """Durable: a future that completes when the row is committed, or fails (``RecordNotStored``) when it
        will not be. Cancelling it before the thread takes the row withdraws the row."""
        waiter: Waiter = Future()
        self._put(row, waiter)
        return waiter

    def _put(self, row: Row, waiter: Waiter | None, *, reserved: bool = False) -> bool:
        with self._lock:
            closed = self._stopping.is_set() and self._thread is None
            accepted = not closed and self._pending() < self.capacity
            if accepted:
                self._buffer.append((row, waiter))
                self._accepted += 0 if reserved else 1
            elif reserved:
                self._done += 1  # counted when reserved: settled as dropped
                self._idle.notify_all()
        if accepted:
            self._wake.set()
            return True
        reason = "buffer_full" if not self._stopping.is_set() else "closed"
        self._drop(reason, 1)
        if waiter is not None:
            waiter.set_exception(RecordNotStored(reason))
        return False

    def _pending(self) -> int:
        return len(self._buffer) + len(self._inflight)

    @property
    def buffered(self) -> int:
        return self._pending()

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Waits until everything enqueued before this call is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._accepted
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._wake.set()
                self._idle.wait(min(left, 0.1))
        return True

    def close(self, timeout: float) -> None:
        """Shutdown: write what is buffered within ``timeout`` seconds in all; what is left then is counted as
        dropped (reason ``shutdown``) and logged. A store that hangs (a lock, a dead server) cannot hold the
        stop longer: the thread is a daemon and is not waited for beyond the bound."""
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout) if self._thread is not None else False
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.1, min(1.0, deadline - time.monotonic())))
        with self._lock:
            left = self._buffer.copy()
            left.extend(self._inflight)
            self._buffer.clear()
            self._inflight = []
            self._done += len(left)
            self._thread = None
            self._idle.notify_all()
        if left:
            log.error("audit: the shutdown flush ended after %.1f s (CXR_AUDIT_FLUSH_TIMEOUT_S); store: %s",
                      timeout, self.last_error or "too slow")
            self._drop("shutdown", len(left))
            for _, waiter in left:
                _fail(waiter, "shutdown")
        elif flushed:
            log.info("audit: all records written at shutdown (%d in this run)", self.written)
        self.engine.dispose()

    # -- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.migrated:
                if not self._attempt(self._migrate):
                    self._stopping.wait(self.retry_s)
                continue
            if not self._inflight and not self._buffer:
                self._wake.clear()
                if not self._buffer and not self._wake.wait(self.ping_s):
                    self._attempt(lambda: store.ping(self.engine))  # idle: keep readiness honest
                    continue
                if self.linger_s > 0:
                    self._stopping.wait(self.linger_s)  # let a batch gather
            if not self._inflight:
                self._take()
            if self._inflight and not self._write(self._inflight):
                self._stopping.wait(self.retry_s)

    def _take(self) -> None:
        """Moves up to a batch from the buffer to the thread; durable rows whose waiter gave up are withdrawn."""
        withdrawn = 0
        with self._lock:
            while self._buffer and len(self._inflight) < self.batch_size:
                row, waiter = self._buffer.popleft()
                if waiter is not None and not waiter.set_running_or_notify_cancel():
                    withdrawn += 1  # its answer was refused (commit timeout): no record for it
                    continue
                self._inflight.append((row, waiter))
            self._done += withdrawn
            if withdrawn:
                self._idle.notify_all()
        if withdrawn:
            self._drop("withdrawn", withdrawn)

    def _migrate(self) -> None:
        if self.migrate:
            with file_lock(lock_path(MIGRATE_LOCK)):  # workers of one cxr-serve: one migrates, then none
                store.upgrade(self.engine)
        else:
            store.ping(self.engine)
        self.migrated = True

    def _attempt(self, action: Callable[[], None]) -> bool:
        try:
            action()
        except SQLAlchemyError as exc:
            self._set_state(False, exc)
            return False
        except Exception as exc:  # e.g. a migration bug: never kill the thread, say so
            self._set_state(False, exc)
            return False
        self._set_state(True)
        return True

    def _write(self, batch: list[tuple[Row, Waiter | None]]) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(AuditRecord), full_rows([row for row, _ in batch]))
        except Exception as exc:  # the thread must outlive any bad row
            if is_outage(exc):
                self._set_state(False, exc)
                return False
            self._write_one_by_one(batch)
            return True
        self._set_state(True)
        self._settle(list(batch), written=len(batch))
        return True

    def _write_one_by_one(self, batch: list[tuple[Row, Waiter | None]]) -> None:
        """A batch the store refused for its data: every good row still goes in; bad ones are counted."""
        handled: list[tuple[Row, Waiter | None]] = []
        written = 0
        for entry in list(batch):
            row, waiter = entry
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(AuditRecord), full_rows([row]))
                written += 1
                handled.append(entry)
            except Exception as exc:  # a row that cannot be stored (data, not the store)
                if is_outage(exc):
                    self._set_state(False, exc)
                    break  # keep the rest for a retry: settle only what was handled
                log.error("audit: the store rejected record %s: %s", row.get("request_id"), type(exc).__name__)
                self._settle([entry], written=0)
                self._drop("rejected", 1)
                _fail(waiter, "rejected")
        self._settle(handled, written=written)

    def _settle(self, entries: list[tuple[Row, Waiter | None]], *, written: int) -> None:
        with self._lock:
            ids = {id(entry) for entry in entries}
            self._inflight = [entry for entry in self._inflight if id(entry) not in ids]
            self._done += len(entries)
            self._idle.notify_all()
        if written:
            for _, waiter in entries:
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            self.written += written
            self.stats.on_written(written)
        self.stats.on_state(self.store_up, self._pending())

    def _set_state(self, up: bool, exc: BaseException | None = None) -> None:
        if up and not self.store_up:
            log.info("audit: store reachable (%s); %d records buffered", store.safe_url(str(self.engine.url)),
                     self._pending())
            self.last_error = None
        elif not up:
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if self.store_up or self.last_error is None:
                log.warning("audit: store unreachable (%s), buffering up to %d records: %s",
                            store.safe_url(str(self.engine.url)), self.capacity, detail)
            self.last_error = detail
        self.store_up = up
        self.stats.on_state(up, self._pending())

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] += count
        self.stats.on_dropped(reason, count)
        total = self.dropped[reason]
        # one line per power of two: every loss is logged, a long outage does not flood the log
        if total & (total - 1) == 0 or reason != "buffer_full":
            log.error("audit: %d record(s) not stored (%s; %d so far for this reason)", count, reason, total)


def _fail(waiter: Waiter | None, reason: str) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_exception(RecordNotStored(reason))
