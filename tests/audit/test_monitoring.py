"""Window figures and drift from the store, on SQLite and a real PostgreSQL, against hand-computed values."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_rows import SHA, answer, days_ago, refusal
from sqlalchemy import insert, select

from app.audit import store
from app.audit.drift import Reference, band, bin_index, drift_report, psi, reference_of
from app.audit.models import AuditRecord, Feedback
from app.audit.monitoring import window_stats

EDGES = [i / 10 for i in range(11)]


def load(url: str, rows: list[dict], labels: dict[str, list[str]]):
    engine = store.make_engine(store.resolve_url(url, Path()))
    store.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(insert(AuditRecord), rows)
        ids = dict(connection.execute(select(AuditRecord.request_id, AuditRecord.id)).all())
        for request_id, history in labels.items():
            for label in history:  # in order: the last one is the latest
                connection.execute(insert(Feedback), [{"record_id": ids[request_id], "request_id": request_id,
                                                       "label": label, "reader_id": "r",
                                                       "created_at": datetime.now(UTC)}])
    return engine


def test_window_figures_match_a_hand_computed_confusion_matrix(store_url: str) -> None:
    # (request id, P(positive)) -> decision at threshold 0.5; truth given by the latest label
    answers = {"a1": 0.9, "a2": 0.8, "a3": 0.7, "a4": 0.6, "a5": 0.3, "a6": 0.2, "a7": 0.1, "a8": 0.05,
               "a9": 0.95, "a10": 0.4}
    labels = {
        "a1": ["PNEUMONIA"],               # TP
        "a2": ["PNEUMONIA"],               # TP
        "a3": ["PNEUMONIA", "NORMAL"],     # relabelled: FP (the latest counts)
        "a4": ["NORMAL"],                  # FP
        "a5": ["PNEUMONIA"],               # FN
        "a6": ["NORMAL"],                  # TN
        "a7": ["NORMAL"],                  # TN
        "a8": ["NORMAL", "PNEUMONIA"],     # relabelled: FN
        "a9": ["uncertain"],               # counted apart
        # a10: no label
        "old": ["PNEUMONIA"],              # outside the window
        "other": ["PNEUMONIA"],            # another model
    }
    rows = [answer(k, p) for k, p in answers.items()]
    rows += [answer("old", 0.9, created=days_ago(10)), answer("other", 0.1, model_sha256="cd" * 32)]
    rows += [refusal("r1", "unsupported_format", 415), refusal("r2", "unsupported_format", 415),
             refusal("r3", "not_a_chest_xray", 422), refusal("r4", "unauthorized", 401),
             refusal("r5", "unauthorized", 401, created=days_ago(10))]
    engine = load(store_url, rows, labels)
    try:
        figures = window_stats(engine, hours=24 * 7, model_sha256=SHA, reference=None)
    finally:
        engine.dispose()
    assert figures["answers"] == 10
    assert figures["positives"] == 5  # a1 a2 a3 a4 a9
    assert figures["positive_rate"]["value"] == 0.5
    assert figures["refusals"] == {"total": 4, "by_reason": {"not_a_chest_xray": 1, "unauthorized": 1,
                                                            "unsupported_format": 2}}
    feedback = figures["feedback"]
    assert feedback["confusion_matrix"] == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
    assert feedback["confirmed"] == 8 and feedback["uncertain"] == 1
    assert feedback["sensitivity"] == {"value": 0.5, "numerator": 2, "denominator": 4}
    assert feedback["specificity"] == {"value": 0.5, "numerator": 2, "denominator": 4}
    assert feedback["ppv"] == {"value": 0.5, "numerator": 2, "denominator": 4}
    assert figures["drift"]["available"] is False


def test_drift_in_sql_matches_the_psi_by_hand(store_url: str) -> None:
    reference = Reference(EDGES, [30, 20, 10, 5, 5, 5, 5, 5, 5, 10])
    # 60 answers: bins 0..9 get these counts (p at each bin's middle, 1.0 itself goes to the last bin)
    observed = [6, 6, 6, 6, 6, 6, 6, 6, 6, 6]
    rows = []
    for b, n in enumerate(observed):
        for j in range(n):
            p = 1.0 if (b == 9 and j == 0) else EDGES[b] + 0.05
            rows.append(answer(f"b{b}-{j}", p))
    rows.append(answer("edge", 0.1))  # exactly on an edge: the upper bin (bin 1)
    observed[1] += 1
    engine = load(store_url, rows, {})
    try:
        figures = window_stats(engine, hours=1, model_sha256=SHA, reference=reference)
    finally:
        engine.dispose()
    drift = figures["drift"]
    assert [b["observed"] for b in drift["bins"]] == observed
    e = [c / 100 for c in reference.counts]
    o = [c / sum(observed) for c in observed]
    by_hand = sum((oi - ei) * math.log(oi / ei) for oi, ei in zip(o, e, strict=True))
    assert drift["available"] is True and drift["psi"] == pytest.approx(by_hand, abs=1e-6)
    assert drift["band"] == band(by_hand) == ("significant" if by_hand >= 0.25 else "moderate")


def test_psi_bands_bins_and_guards() -> None:
    assert psi([10] * 10, [10] * 10) == 0.0
    assert band(0.0999) == "stable" and band(0.1) == "moderate" and band(0.2499) == "moderate"
    assert band(0.25) == "significant"
    assert [bin_index(p, EDGES) for p in (0.0, 0.0999, 0.1, 0.55, 0.9999, 1.0)] == [0, 0, 1, 5, 9, 9]
    # an empty observed bin does not blow up (share floored at 1e-4)
    assert math.isfinite(psi([10] * 10, [0] + [10] * 9))


def test_no_validation_distribution_means_drift_unavailable_not_faked() -> None:
    reason = reference_of({"accuracy": 0.9})  # the v1 artifact's metrics
    assert isinstance(reason, str)
    report = drift_report(reason, None)
    assert report == {"available": False, "reason": reason}
    assert isinstance(reference_of({"validation_distribution": {"bin_edges": [0, 0.5, 0.4], "counts": [1, 2]}}),
                      str)
    assert isinstance(reference_of({"validation_distribution": {"bin_edges": EDGES, "counts": [1] * 9}}), str)
    good = reference_of({"validation_distribution": {"bin_edges": EDGES, "counts": [3] * 10}})
    assert isinstance(good, Reference)
    few = drift_report(good, [1] * 10)  # 10 answers: too few for a PSI
    assert few["available"] is False and "psi" not in few and few["n"] == 10

