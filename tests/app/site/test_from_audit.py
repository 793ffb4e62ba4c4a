"""``cxr-site validate --from-audit``: the audit store's confirmed answers, one version's, in the window, with
the report saying why that sample is biased."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from app.audit import store
from app.audit.models import AuditRecord, Feedback
from app.site.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "audit"))  # audit_rows (importlib mode)
from audit_rows import answer, days_ago, refusal


def _fill(url: str) -> tuple[np.ndarray, np.ndarray]:
    """60 + 60 confirmed answers of v2 in the window, plus what must be left out: an old one, an unconfirmed
    one, an 'uncertain' one, a refusal, and v1's answers."""
    rng = np.random.default_rng(0)
    engine = store.make_engine(url)
    store.upgrade(engine)
    labels = np.r_[np.zeros(60, int), np.ones(60, int)]
    scores = np.clip(rng.normal(0.25 + 0.5 * labels, 0.2), 0.01, 0.99)
    rows = [answer(f"r{i}", float(p), threshold=0.247, created=days_ago(3)) for i, p in enumerate(scores)]
    rows += [answer("old", 0.9, created=days_ago(60)), answer("unconfirmed", 0.9), answer("unsure", 0.9),
             refusal("refused", "not_a_chest_xray")]
    v1 = [answer(f"v1-{i}", 0.5) | {"model_version": "1"} for i in range(3)]
    labelled = {f"r{i}": ["NORMAL", "PNEUMONIA"][y] for i, y in enumerate(labels)} | {
        "old": "PNEUMONIA", "unsure": "uncertain", **{f"v1-{i}": "NORMAL" for i in range(3)}}
    with engine.begin() as connection:
        for row in rows + v1:
            record_id = connection.execute(insert(AuditRecord).values(**row)).inserted_primary_key[0]
            if row["request_id"] in labelled:
                connection.execute(insert(Feedback).values(record_id=record_id, request_id=row["request_id"],
                                                           label=labelled[row["request_id"]], reader_id="r1",
                                                           created_at=days_ago(1)))
    engine.dispose()
    return scores, labels


def test_from_audit_reports_confirmed_answers_of_one_version_and_says_why_they_are_biased(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    scores, labels = _fill(url)
    code = main(["validate", "--from-audit", "--since", "30d", "--audit-url", url, "--model-version", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["as_served"]["counts"] == {"NORMAL": 60, "PNEUMONIA": 60, "total": 120, "prevalence": 0.5}
    point = report["as_served"]["operating_points"]["default"]  # v2's stored threshold
    called = scores >= point["threshold"]
    assert point["tp"] == int((called & (labels == 1)).sum()) and point["fp"] == int((called & (labels == 0)).sum())
    assert "biased" in report["bias"] and "chose to confirm" in report["bias"]
    assert report["audit"]["confirmed_answers_by_version"] == {"2": 120, "1": 3}
    assert "biased" in (tmp_path / "out" / "report.html").read_text()
    assert "WARNING: This sample is biased" in capsys.readouterr().out
