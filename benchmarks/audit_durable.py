"""What durable audit mode costs: cxr-serve with CXR_AUDIT_DURABLE=true (an answer waits for its record's group
commit) against the buffered default, same model, same upload, 64 connections, on SQLite and on PostgreSQL.
For each store the two servers take turns in ABBA order (the idle one frozen with SIGSTOP) and the medians'
ratio is printed, with the server CPU per answer (steadier than req/s on a busy machine).

Usage: ``python benchmarks/audit_durable.py`` (about 4 minutes): SQLite in a temporary folder, and a PostgreSQL
of its own (Debian's binaries, initdb in a temporary folder, fsync on: commits cost what they cost in production)
unless ``--pg-url postgresql://...`` names one. ``--stores sqlite`` measures one store. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "audit"))  # the tests' PostgreSQL helper
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import compare, load_arguments, prepare


@contextlib.contextmanager
def own_postgres() -> Iterator[str]:
    from audit_pg import Postgres, find_bin, fresh_pg_database

    bin_dir = find_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL binaries not found (apt-get install postgresql), or pass --pg-url")
    server = Postgres(bin_dir, fsync=True)
    try:
        server.init()
        yield fresh_pg_database(server)
    finally:
        server.destroy()


def store_urls(pg_url: str, workdir: Path) -> dict[str, str]:
    """One fresh store per server (the two must not share one: each is measured alone)."""
    if not pg_url:
        return {mode: f"sqlite:///{workdir / f'audit-{mode}-{uuid.uuid4().hex[:6]}.db'}"
                for mode in ("durable", "buffered")}
    from sqlalchemy import create_engine, text

    from app.audit import store

    urls = {}
    admin = create_engine(store.resolve_url(pg_url, Path()), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for mode in ("durable", "buffered"):
            name = f"bench_{mode}_{uuid.uuid4().hex[:6]}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
            urls[mode] = pg_url.rsplit("/", 1)[0] + "/" + name
    admin.dispose()
    return urls


def measure(label: str, urls: dict[str, str], upload: object, args: argparse.Namespace, workdir: Path) -> None:
    settings = {mode: {"CXR_AUDIT_URL": urls[mode], "CXR_AUDIT_DURABLE": str(mode == "durable").lower()}
                for mode in ("durable", "buffered")}
    rates, cpu_ms = compare(settings, upload, args, workdir, note=f"store {label}", log_prefix=f"{label}-")
    durable, buffered = rates["durable"], rates["buffered"]
    print(f"{label}: median durable {durable:.1f} req/s, buffered {buffered:.1f} req/s, ratio "
          f"{durable / buffered:.3f}; server CPU per answer durable {cpu_ms['durable']:.2f} ms, buffered "
          f"{cpu_ms['buffered']:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--pg-url", help="a PostgreSQL server to create the two databases on (default: start one)")
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.set_defaults(rounds=2)  # ABBA: one A-B round and one B-A round
    args = parser.parse_args()
    workdir, upload = prepare(args, "cxr-audit-durable-")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    started = time.monotonic()
    if "sqlite" in stores:
        measure("SQLite", store_urls("", workdir), upload, args, workdir)
    if "postgresql" in stores:
        with contextlib.ExitStack() as stack:
            pg_url = args.pg_url or stack.enter_context(own_postgres())
            measure("PostgreSQL", store_urls(pg_url, workdir), upload, args, workdir)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
