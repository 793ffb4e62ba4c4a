"""Live figures over a rolling window, computed in SQL from the audit store (the same on SQLite and PostgreSQL):
answers, positive rate, refusals by reason, the confusion matrix of answers against the latest reader label,
sensitivity / specificity / PPV with their counts (overall and per operating point, since each point decides with
its own threshold), and drift (PSI) of P(positive) against validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from app.audit.drift import Reference, drift_report
from app.audit.models import AuditRecord, Feedback
from model_store.site_calibration import DEFAULT_POINT

POSITIVE, NEGATIVE, UNCERTAIN = "PNEUMONIA", "NORMAL", "uncertain"
LABELS = (NEGATIVE, POSITIVE, UNCERTAIN)


def ratio(numerator: int, denominator: int) -> dict[str, Any]:
    return {"value": round(numerator / denominator, 6) if denominator else None,
            "numerator": numerator, "denominator": denominator}


def window_stats(engine: Engine, *, hours: float, model_sha256: str | None = None,
                 reference: Reference | str | None = None, positive_class: str = POSITIVE,
                 now: datetime | None = None) -> dict[str, Any]:
    """Figures for answers (of one model when ``model_sha256`` is given) and refusals created in the last
    ``hours``; drift only when a reference (or the reason there is none) is given."""
    until = now or datetime.now(UTC)
    since = until - timedelta(hours=hours)
    r = AuditRecord
    in_window = and_(r.created_at >= since, r.created_at <= until)
    answers_where = and_(in_window, r.outcome == "answer",
                         *([r.model_sha256 == model_sha256] if model_sha256 else []))
    latest = (select(Feedback.record_id, func.max(Feedback.id).label("feedback_id"))
              .group_by(Feedback.record_id).subquery())
    with engine.connect() as connection:
        answers, positives = connection.execute(
            select(func.count(), func.coalesce(func.sum(case((r.decision == positive_class, 1), else_=0)), 0))
            .where(answers_where)).one()
        refusals = dict(connection.execute(
            select(r.error_code, func.count()).where(in_window, r.outcome == "refusal")
            .group_by(r.error_code)).all())
        by_point = connection.execute(
            select(r.operating_point, r.decision, Feedback.label, func.count())
            .join(latest, latest.c.record_id == r.id).join(Feedback, Feedback.id == latest.c.feedback_id)
            .where(answers_where).group_by(r.operating_point, r.decision, Feedback.label)).all()
        observed = None
        if isinstance(reference, Reference):
            edges = reference.edges
            bins = case(*[(r.p_positive < edges[i], i - 1) for i in range(1, len(edges) - 1)],
                        else_=len(edges) - 2)
            counts = dict(connection.execute(
                select(bins, func.count()).where(answers_where, r.p_positive.is_not(None)).group_by(bins)).all())
            observed = [int(counts.get(i, 0)) for i in range(len(edges) - 1)]
    return {
        "window": {"hours": hours, "since": since.isoformat(), "until": until.isoformat()},
        "answers": int(answers), "positives": int(positives), "positive_rate": ratio(int(positives), int(answers)),
        "refusals": {"total": int(sum(refusals.values())),
                     "by_reason": {str(code): int(n) for code, n in sorted(refusals.items(), key=str)}},
        "feedback": confusion([row[1:] for row in by_point], positive_class),
        # records from before operating points existed carry none: they were decided at the stored threshold
        "by_operating_point": {point: confusion([row[1:] for row in by_point if (row[0] or DEFAULT_POINT) == point],
                                                positive_class)
                               for point in sorted({row[0] or DEFAULT_POINT for row in by_point})},
        "drift": drift_report(reference, observed) if reference is not None else
        {"available": False, "reason": "no model to compare with"},
    }


def confusion(pairs: list[Any], positive_class: str) -> dict[str, Any]:
    """Answers with a confirmed label: positive = the model's positive class, NORMAL = negative; 'uncertain'
    labels are counted but excluded from the rates."""
    cells = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    uncertain = 0
    for decision, label, count in pairs:
        if label == UNCERTAIN:
            uncertain += count
            continue
        truth = label == positive_class
        said = decision == positive_class
        cells[("t" if said == truth else "f") + ("p" if said else "n")] += count
    tp, fp, tn, fn = cells["tp"], cells["fp"], cells["tn"], cells["fn"]
    return {"confirmed": tp + fp + tn + fn, "uncertain": uncertain, "confusion_matrix": cells,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp)}
