"""Audit fixtures: an SQLite store per test, one real PostgreSQL per session (a fresh database per test)."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # audit_pg, audit_rows (importlib mode)
from audit_pg import Postgres, find_bin, fresh_pg_database


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql: initdb and pg_ctl)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as (PostgreSQL "
                        "refuses root)")
    server = Postgres(bin_dir)
    try:
        server.init()
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    server = request.getfixturevalue("postgres")
    if not server.running():
        server.start()
    return fresh_pg_database(server)
