"""``cxr-audit``: export (JSON lines and CSV, with --since), stats, migrate and purge, on both stores."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_rows import answer, days_ago, refusal
from sqlalchemy import insert, select

from app.audit import store
from app.audit.cli import main, parse_when
from app.audit.models import AuditRecord, Feedback

REPO = Path(__file__).resolve().parents[2]


def seed(url: str) -> None:
    engine = store.make_engine(store.resolve_url(url, Path()))
    store.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(insert(AuditRecord), [answer("new-1", 0.9), answer("new-2", 0.2),
                                                 refusal("new-3", "unsupported_format", 415),
                                                 answer("old-1", 0.7, created=days_ago(40))])
        record_id = connection.execute(select(AuditRecord.id).where(AuditRecord.request_id == "new-1")).scalar()
        for label in ("NORMAL", "PNEUMONIA"):
            connection.execute(insert(Feedback), [{"record_id": record_id, "request_id": "new-1", "label": label,
                                                   "reader_id": "r9", "created_at": datetime.now(UTC)}])
    engine.dispose()


def test_export_jsonl_and_csv_since(store_url: str, capsys, tmp_path: Path) -> None:
    seed(store_url)
    assert main(["--url", store_url, "export", "--since", "7d", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in lines] == ["new-1", "new-2", "new-3"]
    first = lines[0]
    assert first["confirmed_label"] == "PNEUMONIA" and [f["label"] for f in first["feedback"]] == ["NORMAL",
                                                                                               "PNEUMONIA"]
    assert first["probabilities"]["PNEUMONIA"] == 0.9 and first["created_at"].endswith("+00:00")

    out = tmp_path / "audit.csv"
    assert main(["--url", store_url, "export", "--since", "2000-01-01", "--format", "csv", "-o", str(out)]) == 0
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["request_id"] for r in table] == ["old-1", "new-1", "new-2", "new-3"]
    assert table[1]["feedback_count"] == "2" and table[1]["confirmed_label"] == "PNEUMONIA"
    assert json.loads(table[1]["probabilities"])["PNEUMONIA"] == 0.9
    assert table[3]["error_code"] == "unsupported_format" and table[3]["status"] == "415"


def test_stats_and_purge(store_url: str, capsys) -> None:
    seed(store_url)
    assert main(["--url", store_url, "stats", "--since", "30d"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["answers"] == 2 and figures["refusals"]["total"] == 1 and figures["total_records"] == 4
    assert figures["feedback"]["confusion_matrix"] == {"tp": 1, "fp": 0, "tn": 0, "fn": 0}
    assert main(["--url", store_url, "purge", "--before", "30d"]) == 0
    assert "deleted 1 records" in capsys.readouterr().out
    assert main(["--url", store_url, "export", "--since", "2000-01-01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_parse_when() -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert parse_when("24h", now) == now - timedelta(hours=24)
    assert parse_when("2w", now) == now - timedelta(weeks=2)
    assert parse_when("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-11-01T10:00:00+01:00", now) == datetime(2026, 11, 1, 9, tzinfo=UTC)


def test_console_entry_point_migrates_a_fresh_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x' / 'audit.db'}"
    done = subprocess.run([sys.executable, "-m", "app.audit.cli", "--url", url, "migrate"], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "at revision 0002" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "app.audit.cli", "--url", url, "export", "--since", "yesterday"],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a time" in bad.stderr
