"""Alembic environment: runs on the connection handed over in ``config.attributes`` (see app/audit/store.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from app.audit.models import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn: object) -> None:
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # plain `alembic -x` use: the URL from the config
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
