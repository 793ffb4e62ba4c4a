"""``cxr-audit``: export the audit trail, print the monitoring figures, migrate, apply retention.

The store is ``--url``, else ``CXR_AUDIT_URL``, else the SQLite file at ``CXR_AUDIT_PATH`` (as the service).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from sqlalchemy import Engine, delete, func, select

from app.audit import store
from app.audit.models import RECORD_COLUMNS, AuditRecord, Feedback
from app.audit.monitoring import window_stats

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([hdw])$")
UNITS = {"h": 1.0, "d": 24.0, "w": 168.0}
EXPORT_COLUMNS = ("id", *RECORD_COLUMNS, "confirmed_label", "feedback_count")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00:00`` (UTC unless it says otherwise), or ``24h`` / ``7d`` / ``2w`` ago."""
    now = now or datetime.now(UTC)
    match = RELATIVE.match(text.strip())
    if match:
        return now - timedelta(hours=float(match.group(1)) * UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use 2026-11-01, 2026-11-01T12:00:00+00:00, "
                                         "24h, 7d or 2w") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def engine_for(url: str | None) -> Engine:
    if url:
        return store.make_engine(store.resolve_url(url, store.Path()))
    from app.settings import Settings

    settings = Settings.load()
    return store.make_engine(store.resolve_url(settings.audit_url, settings.audit_path))


def records(engine: Engine, since: datetime, until: datetime | None) -> Iterator[dict[str, Any]]:
    """Records created in [since, until], oldest first, each with its feedback history (streamed)."""
    r = AuditRecord
    where = [r.created_at >= since] + ([r.created_at <= until] if until else [])
    with engine.connect() as connection:
        feedback: dict[int, list[dict[str, Any]]] = {}
        for f in connection.execute(select(Feedback).join(r, r.id == Feedback.record_id).where(*where)
                                    .order_by(Feedback.id)).mappings():
            feedback.setdefault(f["record_id"], []).append(
                {"label": f["label"], "reader_id": f["reader_id"], "recorded_at": f["created_at"].isoformat()})
        query = select(r).where(*where).order_by(r.created_at, r.id)
        rows = connection.execution_options(yield_per=1000).execute(query)
        for row in rows.mappings():
            record = {column: row[column] for column in ("id", *RECORD_COLUMNS)}
            record["created_at"] = record["created_at"].isoformat()
            history = feedback.get(record["id"], [])
            record["feedback"] = history
            record["confirmed_label"] = history[-1]["label"] if history else None
            yield record


def export(engine: Engine, since: datetime, until: datetime | None, fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "jsonl":
        for record in records(engine, since, until):
            out.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records(engine, since, until):
        record["feedback_count"] = len(record["feedback"])
        for column in ("probabilities", "timings"):
            if record[column] is not None:
                record[column] = json.dumps(record[column], sort_keys=True)
        writer.writerow(record)
        count += 1
    return count


def purge(engine: Engine, before: datetime) -> int:
    """Retention: deletes records (and their feedback) created before ``before``."""
    with engine.begin() as connection:
        old = select(AuditRecord.id).where(AuditRecord.created_at < before)
        connection.execute(delete(Feedback).where(Feedback.record_id.in_(old)))
        return connection.execute(delete(AuditRecord).where(AuditRecord.created_at < before)).rowcount or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr-audit", description="The cxr-serve audit trail: export, figures, "
                                     "migrations, retention. Store: --url, else CXR_AUDIT_URL, else the SQLite "
                                     "file at CXR_AUDIT_PATH.")
    parser.add_argument("--url", help="store URL, e.g. postgresql://user:pw@host/db or sqlite:////path/audit.db")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="records (with their feedback) as JSON lines or CSV")
    ex.add_argument("--since", type=parse_when, required=True, help="2026-11-01, an ISO time, or 24h / 7d / 2w ago")
    ex.add_argument("--until", type=parse_when, help="same forms; default now")
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument("--output", "-o", help="file to write (default: standard output)")
    st = sub.add_parser("stats", help="the monitoring figures over a window (JSON)")
    st.add_argument("--since", type=parse_when, default=None, help="start of the window (default: 7d)")
    st.add_argument("--model-sha256", help="only this model's answers (default: every model)")
    sub.add_parser("migrate", help="bring the schema to the latest version (the service also does it at start)")
    pg = sub.add_parser("purge", help="retention: delete records older than a time")
    pg.add_argument("--before", type=parse_when, required=True, help="e.g. 365d, or 2025-12-01")
    args = parser.parse_args(argv)

    engine = engine_for(args.url)
    try:
        if args.command == "migrate":
            store.upgrade(engine)
            print(f"audit store {store.safe_url(str(engine.url))} at revision {store.current_revision(engine)}")
        elif args.command == "export":
            out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
            try:
                count = export(engine, args.since, args.until, args.format, out)
            finally:
                if out is not sys.stdout:
                    out.close()
            print(f"cxr-audit: exported {count} records", file=sys.stderr)
        elif args.command == "stats":
            now = datetime.now(UTC)
            since = args.since or now - timedelta(days=7)
            figures = window_stats(engine, hours=(now - since).total_seconds() / 3600, now=now,
                                   model_sha256=args.model_sha256)
            with engine.connect() as connection:
                figures["total_records"] = connection.execute(select(func.count()).select_from(AuditRecord)).scalar()
            figures.pop("drift")  # needs the model's validation distribution: GET /monitoring has it
            print(json.dumps(figures, indent=2))
        elif args.command == "purge":
            print(f"cxr-audit: deleted {purge(engine, args.before)} records created before "
                  f"{args.before.isoformat()}")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
