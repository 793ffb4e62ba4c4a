"""The background writer: requests only enqueue (non-blocking); one thread inserts in batches.

The buffer is bounded: while the store is down it holds up to ``capacity`` rows and retries; beyond that a row
is not stored, and that is counted (``cxr_audit_records_dropped_total{reason}``) and logged, never silent.
A row that the store rejects on its own (not an outage) is retried alone and dropped (counted) if it still fails.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError

from app.audit import store
from app.audit.models import RECORD_COLUMNS, AuditRecord

log = logging.getLogger("cxr.audit")

Row = dict[str, Any]
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
        self._buffer: collections.deque[Row] = collections.deque()
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
    def enqueue(self, row: Row) -> bool:
        with self._lock:
            closed = self._stopping.is_set() and self._thread is None
            accepted = not closed and len(self._buffer) < self.capacity
            if accepted:
                self._buffer.append(row)
                self._accepted += 1
        if accepted:
            self._wake.set()
            return True
        self._drop("buffer_full" if not self._stopping.is_set() else "closed", 1)
        return False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

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
        """Shutdown: write what is buffered (up to ``timeout`` seconds), count and log what could not be."""
        flushed = self.flush(timeout) if self._thread is not None else False
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(1.0, min(timeout, 5.0)))
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
            self._done += left
            self._thread = None
        if left:
            self._drop("shutdown", left)
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
            if not self._buffer:
                self._wake.clear()
                if not self._buffer and not self._wake.wait(self.ping_s):
                    self._attempt(lambda: store.ping(self.engine))  # idle: keep readiness honest
                    continue
                self._stopping.wait(self.linger_s)  # let a batch gather
            with self._lock:
                batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            if batch and not self._write(batch):
                self._stopping.wait(self.retry_s)

    def _migrate(self) -> None:
        if self.migrate:
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

    def _write(self, batch: list[Row]) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(AuditRecord), full_rows(batch))
        except Exception as exc:  # the thread must outlive any bad row
            if is_outage(exc):
                self._set_state(False, exc)
                return False
            self._write_one_by_one(batch)
            return True
        self._set_state(True)
        self._settle(len(batch), written=len(batch))
        return True

    def _write_one_by_one(self, batch: list[Row]) -> None:
        """A batch the store refused for its data: every good row still goes in; bad ones are counted."""
        written = 0
        for row in batch:
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(AuditRecord), full_rows([row]))
                written += 1
            except Exception as exc:  # a row that cannot be stored (data, not the store)
                if is_outage(exc):
                    self._set_state(False, exc)
                    # keep the rest for a retry: settle only what was handled
                    self._settle(written, written=written)
                    return
                log.error("audit: the store rejected record %s: %s", row.get("request_id"), type(exc).__name__)
                self._settle_rejected(row)
        self._settle(written, written=written)

    def _settle_rejected(self, row: Row) -> None:
        with self._lock:
            self._buffer.remove(row)
            self._done += 1
            self._idle.notify_all()
        self._drop("rejected", 1)

    def _settle(self, count: int, *, written: int) -> None:
        with self._lock:
            for _ in range(count):
                self._buffer.popleft()
            self._done += count
            self._idle.notify_all()
        self.written += written
        if written:
            self.stats.on_written(written)
        self.stats.on_state(self.store_up, len(self._buffer))

    def _set_state(self, up: bool, exc: BaseException | None = None) -> None:
        if up and not self.store_up:
            log.info("audit: store reachable (%s); %d records buffered", store.safe_url(str(self.engine.url)),
                     len(self._buffer))
            self.last_error = None
        elif not up:
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if self.store_up or self.last_error is None:
                log.warning("audit: store unreachable (%s), buffering up to %d records: %s",
                            store.safe_url(str(self.engine.url)), self.capacity, detail)
            self.last_error = detail
        self.store_up = up
        self.stats.on_state(up, len(self._buffer))

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] += count
        self.stats.on_dropped(reason, count)
        total = self.dropped[reason]
        # one line per power of two: every loss is logged, a long outage does not flood the log
        if total & (total - 1) == 0 or reason != "buffer_full":
            log.error("audit: %d record(s) not stored (%s; %d so far for this reason)", count, reason, total)
