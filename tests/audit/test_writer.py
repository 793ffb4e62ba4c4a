"""The background writer: batched inserts, a bounded buffer across a store outage (a real PostgreSQL stopped
and started again), overflow and shutdown losses counted, rows the store rejects isolated."""

from __future__ import annotations

import time
from pathlib import Path

from audit_pg import fresh_pg_database
from audit_rows import answer, refusal
from sqlalchemy import event, func, select

from app.audit import store
from app.audit.models import AuditRecord
from app.audit.writer import AuditWriter, WriterStats


def count(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(AuditRecord)).scalar_one()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def make_writer(url: str, **kwargs) -> AuditWriter:
    options = {"retry_s": 0.1, "ping_s": 0.1, "linger_s": 0.01, **kwargs}
    return AuditWriter(store.make_engine(store.resolve_url(url, Path())), **options)


def test_rows_are_inserted_in_batches_and_flushed_on_close(store_url: str) -> None:
    writer = make_writer(store_url, batch_size=200)
    statements = []
    event.listen(writer.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql)
                 if sql.lstrip().upper().startswith("INSERT INTO AUDIT_RECORDS") else None)
    writer.start()
    wait_for(lambda: writer.store_up)
    for i in range(1000):
        assert writer.enqueue(answer(f"r{i}", i / 1000))
    writer.close(timeout=30)
    engine = store.make_engine(store.resolve_url(store_url, Path()))
    assert count(engine) == 1000
    assert writer.written == 1000 and not writer.dropped
    assert len(statements) <= 20  # batches, not one INSERT per record
    assert not writer.enqueue(answer("late", 0.5))  # after close: refused and counted, never silent
    assert writer.dropped == {"closed": 1}
    engine.dispose()


def test_outage_buffers_within_the_bound_and_counts_the_overflow(postgres) -> None:
    url = fresh_pg_database(postgres)
    dropped: list[tuple[str, int]] = []
    states: list[bool] = []
    writer = make_writer(url, capacity=50, stats=WriterStats(on_dropped=lambda r, n: dropped.append((r, n)),
                                                             on_state=lambda up, n: states.append(up)))
    writer.start()
    try:
        wait_for(lambda: writer.store_up)
        for i in range(10):
            writer.enqueue(answer(f"before-{i}", 0.5))
        assert writer.flush(30)
        postgres.stop()
        for i in range(80):  # 50 fit in the buffer, 30 do not
            writer.enqueue(answer(f"during-{i}", 0.5))
        wait_for(lambda: not writer.store_up)
        assert writer.buffered == 50
        assert writer.dropped == {"buffer_full": 30} and sum(n for _, n in dropped) == 30
        postgres.start()
        assert writer.flush(60)
        assert writer.store_up and False in states
        engine = store.make_engine(store.resolve_url(url, Path()))
        with engine.connect() as connection:
            ids = set(connection.execute(select(AuditRecord.request_id)).scalars())
        engine.dispose()
        assert ids == {f"before-{i}" for i in range(10)} | {f"during-{i}" for i in range(50)}
    finally:
        if not postgres.running():
            postgres.start()
        writer.close(timeout=10)


def test_a_row_the_store_rejects_is_dropped_alone_and_counted(postgres) -> None:
    url = fresh_pg_database(postgres)
    writer = make_writer(url)
    writer.start()
    wait_for(lambda: writer.store_up)
    bad = answer("bad", 0.5)
    bad["client"] = "x" * 200  # longer than the column: PostgreSQL refuses this row, not the store
    for row in (answer("a", 0.1), bad, answer("b", 0.9)):
        writer.enqueue(row)
    assert writer.flush(30)
    writer.close(timeout=10)
    engine = store.make_engine(store.resolve_url(url, Path()))
    with engine.connect() as connection:
        assert set(connection.execute(select(AuditRecord.request_id)).scalars()) == {"a", "b"}
    engine.dispose()
    assert writer.dropped == {"rejected": 1}


def test_store_unreachable_at_start_then_reachable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    writer = make_writer(f"sqlite:///{blocker / 'audit.db'}")
    writer.start()
    try:
        writer.enqueue(answer("early", 0.5))
        wait_for(lambda: writer.last_error is not None)
        assert not writer.store_up and writer.buffered == 1
        blocker.unlink()  # the writer makes the folder itself on its next try
        assert writer.flush(30) and writer.store_up
        assert count(writer.engine) == 1
    finally:
        writer.close(timeout=10)


def test_shutdown_with_the_store_down_counts_what_was_not_stored(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("")
    writer = make_writer(f"sqlite:///{blocker / 'audit.db'}")
    writer.start()
    for i in range(7):
        writer.enqueue(answer(f"r{i}", 0.5))
    writer.close(timeout=1)
    assert writer.dropped == {"shutdown": 7}


def test_rows_with_fewer_columns_do_not_strip_the_next_rows_of_theirs(store_url: str) -> None:
    short = {k: v for k, v in refusal("first", "unsupported_format", 415).items()
             if not k.startswith("model_") and k not in ("probabilities", "p_positive", "decision")}
    writer = make_writer(store_url)
    writer.start()
    writer.enqueue(short)  # a refusal made before any model was involved: no model columns at all
    writer.enqueue(answer("second", 0.8))
    assert writer.flush(30)
    writer.close(timeout=10)
    engine = store.make_engine(store.resolve_url(store_url, Path()))
    with engine.connect() as connection:
        row = connection.execute(select(AuditRecord).where(AuditRecord.request_id == "second")).mappings().one()
    engine.dispose()
    assert row["model_sha256"] == "ab" * 32 and row["decision"] == "PNEUMONIA" and row["p_positive"] == 0.8


def test_a_row_that_cannot_even_be_serialised_is_dropped_alone(store_url: str) -> None:
    bad = answer("unserialisable", 0.5)
    bad["probabilities"] = {"PNEUMONIA": object()}  # not JSON: fails before it reaches the store
    writer = make_writer(store_url)
    writer.start()
    for row in (answer("a", 0.1), bad, answer("b", 0.9)):
        writer.enqueue(row)
    assert writer.flush(30)
    assert writer._thread is not None and writer._thread.is_alive()  # the writer survived it
    writer.close(timeout=10)
    engine = store.make_engine(store.resolve_url(store_url, Path()))
    with engine.connect() as connection:
        assert set(connection.execute(select(AuditRecord.request_id)).scalars()) == {"a", "b"}
    engine.dispose()
    assert writer.dropped == {"rejected": 1}


def test_a_flush_waits_for_a_reserved_row_and_an_abandoned_one_is_counted(store_url: str) -> None:
    """A lone answer's row is made just after the answer has left (app/audit/hook.py): reserved before, so a
    flush begun in between waits for it rather than missing it."""
    import threading

    writer = make_writer(store_url)
    writer.start()
    try:
        wait_for(lambda: writer.store_up)
        writer.reserve()
        flushed: list[bool] = []
        flushing = threading.Thread(target=lambda: flushed.append(writer.flush(30)))
        flushing.start()
        time.sleep(0.3)
        assert flushing.is_alive() and count(writer.engine) == 0  # waiting for the promised row
        assert writer.enqueue(answer("reserved", 0.5), reserved=True)
        flushing.join(30)
        assert flushed == [True] and count(writer.engine) == 1

        writer.reserve()
        writer.abandon("error")
        assert writer.flush(5) and writer.dropped == {"error": 1} and count(writer.engine) == 1
    finally:
        writer.close(timeout=10)
    writer.reserve()  # closed meanwhile: the promised row is refused, counted, and no flush waits for it
    assert not writer.enqueue(answer("late", 0.5), reserved=True)
    assert writer.dropped == {"error": 1, "closed": 1} and writer.flush(1)
