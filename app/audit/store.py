"""Connecting to the audit store and migrating it: SQLite (WAL) at a path by default, PostgreSQL by URL."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "head"


def resolve_url(url: str | None, path: Path) -> str:
    """``CXR_AUDIT_URL`` as given (a bare ``postgresql://`` means psycopg 3), else SQLite at ``path``."""
    if not url:
        return f"sqlite:///{path}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL for logs and errors: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers (monitoring, export) never block the writer; busy_timeout: several workers share one file
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def make_engine(url: str, *, durable: bool = False) -> Engine:
    """An engine that fails fast when the store is down (the writer retries; buffered requests never wait on
    it). ``durable``: SQLite syncs every commit (WAL + synchronous=FULL), so a committed record survives a power
    loss too, not only a process crash; group commit spreads that fsync over every waiting answer."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        engine = create_engine(url, connect_args={"timeout": 5})
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent

            def make_folder(*_args: object) -> None:
                # at each connect, not once: a folder that could not be made at start may be makeable later
                with contextlib.suppress(OSError):
                    folder.mkdir(parents=True, exist_ok=True)

            event.listen(engine, "do_connect", make_folder)
        event.listen(engine, "connect", _sqlite_pragmas("FULL" if durable else "NORMAL"))
        return engine
    connect_args = {"connect_timeout": 3} if parsed.get_backend_name() == "postgresql" else {}
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, pool_timeout=5,
                         connect_args=connect_args)


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = HEAD) -> None:
    """Brings the schema to ``revision`` (idempotent; safe to run at every start)."""
    with engine.begin() as connection:
        config = _config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as connection:
        config = _config(engine)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        try:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:  # no alembic_version table: an empty store
            return None


def check_writable(engine: Engine) -> None:
    """Raises when the store cannot take a write: SQLite takes its write lock (a read-only file or folder fails
    here, where a plain SELECT would pass); PostgreSQL is reached (the migration then needs its rights)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            connection.exec_driver_sql("ROLLBACK")
        else:
            connection.execute(text("SELECT 1"))


def fix_hint(url: str) -> str:
    """What to do about a store that cannot be written or reached, for the start-up error line."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        folder = Path(parsed.database or "").expanduser().parent
        return (f"mount a writable volume at {folder} (a read-only container needs one), or set CXR_AUDIT_PATH "
                "to a writable file or CXR_AUDIT_URL to a PostgreSQL store")
    return ("check that the PostgreSQL server is up and reachable from here and that the URL's user, password "
            "and database are right (CXR_AUDIT_URL)")


def ping(engine: Engine) -> None:
    """Raises when the store cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
