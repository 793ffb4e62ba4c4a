"""Reader feedback: the confirmed label of an answer, kept as history (the latest one counts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from app.audit.models import AuditRecord, Feedback
from app.audit.writer import AuditWriter
from app.errors import AuditUnavailableError, UnknownRequestError

FLUSH_WAIT_S = 5.0  # an answer sent a moment ago may still sit in the writer's buffer


def _latest_answer(engine: Engine, request_id: str) -> tuple[int, str] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(AuditRecord.id, AuditRecord.decision)
            .where(AuditRecord.request_id == request_id, AuditRecord.outcome == "answer")
            .order_by(AuditRecord.id.desc()).limit(1)).first()
    return (int(row[0]), str(row[1])) if row is not None else None


def record_feedback(engine: Engine, writer: AuditWriter | None, request_id: str, label: str,
                    reader_id: str | None) -> dict[str, Any]:
    """Blocking (run it in a thread). Raises UnknownRequestError (404) or AuditUnavailableError (503)."""
    try:
        found = _latest_answer(engine, request_id)
        if found is None and writer is not None and writer.buffered:
            writer.flush(FLUSH_WAIT_S)
            found = _latest_answer(engine, request_id)
        if found is None:
            raise UnknownRequestError(f"no answered prediction with request id {request_id!r} in the audit trail "
                                      "(refused requests take no feedback)")
        record_id, decision = found
        now = datetime.now(UTC)
        with engine.begin() as connection:
            connection.execute(insert(Feedback), [{"record_id": record_id, "request_id": request_id,
                                                   "label": label, "reader_id": reader_id, "created_at": now}])
            history = connection.execute(
                select(Feedback.label, Feedback.reader_id, Feedback.created_at)
                .where(Feedback.record_id == record_id).order_by(Feedback.id)).all()
    except SQLAlchemyError as exc:
        raise AuditUnavailableError(f"the audit store cannot be reached ({type(exc).__name__}); retry later",
                                    retry_after=5) from exc
    return {"request_id": request_id, "label": label, "reader_id": reader_id, "prediction": decision,
            "recorded_at": now.isoformat(),
            "history": [{"label": h[0], "reader_id": h[1], "recorded_at": h[2].isoformat()} for h in history]}
