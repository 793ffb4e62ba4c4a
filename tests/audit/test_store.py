"""Migrations from an empty store and back, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from audit_rows import answer
from sqlalchemy import insert, inspect, select

from app.audit import store
from app.audit.models import AuditRecord


def test_upgrade_from_empty_then_downgrade_then_upgrade(store_url: str) -> None:
    engine = store.make_engine(store.resolve_url(store_url, None))  # type: ignore[arg-type]
    try:
        assert store.current_revision(engine) is None
        store.upgrade(engine)
        assert store.current_revision(engine) == "0002"
        tables = set(inspect(engine).get_table_names())
        assert {"audit_records", "audit_feedback", "alembic_version"} <= tables
        indexes = {i["name"] for i in inspect(engine).get_indexes("audit_records")}
        columns = {c["name"] for c in inspect(engine).get_columns("audit_records")}
        assert {"caller", "operating_point", "calibration"} <= columns  # migration 0002
        assert {"ix_audit_records_request_id", "ix_audit_records_created_at"} <= indexes

        store.upgrade(engine)  # idempotent: every start runs it
        when = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(insert(AuditRecord), [answer("r1", 0.7, created=when)])
        with engine.connect() as connection:
            row = connection.execute(select(AuditRecord)).mappings().one()
        assert row["created_at"] == when and row["created_at"].tzinfo is not None  # UTC in, UTC out
        assert row["probabilities"] == {"NORMAL": 0.30000000000000004, "PNEUMONIA": 0.7}

        store.downgrade(engine)
        assert store.current_revision(engine) is None
        assert not {"audit_records", "audit_feedback"} & set(inspect(engine).get_table_names())
        store.upgrade(engine)
        assert store.current_revision(engine) == "0002"
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    engine = store.make_engine(store.resolve_url(None, tmp_path / "sub" / "audit.db"))
    try:
        store.upgrade(engine)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_bare_postgresql_url_means_psycopg3_and_password_never_shown() -> None:
    url = store.resolve_url("postgresql://cxr:s3cret@db:5432/audit", None)  # type: ignore[arg-type]
    assert url.startswith("postgresql+psycopg://")
    assert "s3cret" not in store.safe_url(url)


def test_the_start_up_write_check_waits_while_another_worker_holds_the_migration_lock(tmp_path, monkeypatch):
    """Workers of one cxr-serve touch a new SQLite store one at a time: the check runs under the migration lock
    (a worker's first connection beside another's switch to WAL was answered "database is locked" at once)."""
    import threading

    from app.audit.service import Audit
    from app.audit.writer import MIGRATE_LOCK
    from app.metrics import Metrics
    from app.rundir import RUN_DIR_ENV, file_lock, lock_path
    from app.settings import Settings

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    audit = Audit(Settings(audit_path=tmp_path / "audit.db"), Metrics())
    results: list[bool] = []
    with file_lock(lock_path(MIGRATE_LOCK)):  # another worker migrating
        checking = threading.Thread(target=lambda: results.append(audit.check_store()))
        checking.start()
        checking.join(0.5)
        assert checking.is_alive() and not results, "the check did not wait for the migration lock"
    checking.join(10)
    assert results == [True]
    assert audit.engine is not None
    audit.engine.dispose()
