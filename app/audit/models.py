"""The audit store's tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create and change them.

What is here and why it holds no patient data: one row per answer or refusal with hashes, sizes, the model's
identity, its output and timings; never pixels, never DICOM patient fields, never an error message (only the
stable error code), DICOM UIDs only as salted hashes. Feedback rows hold the confirmed label and a reader id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key
BigId = BigInteger().with_variant(Integer, "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Always UTC and timezone-aware on the way out (SQLite keeps no zone; PostgreSQL uses timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON}


class AuditRecord(Base):
    """One answer (a prediction sent) or one refusal (an error sent) for one image or one request."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    route: Mapped[str] = mapped_column(String(200))
    client: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # "answer" | "refusal"
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    input_format: Mapped[str | None] = mapped_column(String(16))
    input_bytes: Mapped[int | None] = mapped_column(BigInteger)
    study_uid_hash: Mapped[str | None] = mapped_column(String(64))
    series_uid_hash: Mapped[str | None] = mapped_column(String(64))
    sop_uid_hash: Mapped[str | None] = mapped_column(String(64))
    gate_score: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str | None] = mapped_column(String(100))
    model_version: Mapped[str | None] = mapped_column(String(32))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    runtime: Mapped[str | None] = mapped_column(String(64))
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    p_positive: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # migration 0002: the caller's name (API key name or token subject, never the credential itself), and the
    # calibration and named operating point that turned the model's output into the decision
    caller: Mapped[str | None] = mapped_column(String(128))
    operating_point: Mapped[str | None] = mapped_column(String(32))
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Feedback(Base):
    """A reader's confirmed label for one answer; several per answer are kept as history, the latest counts."""

    __tablename__ = "audit_feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(BigId, ForeignKey("audit_records.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str] = mapped_column(String(160), index=True)
    label: Mapped[str] = mapped_column(String(16))  # NORMAL | PNEUMONIA | uncertain
    reader_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column()


RECORD_COLUMNS = tuple(c.name for c in AuditRecord.__table__.columns if c.name != "id")
