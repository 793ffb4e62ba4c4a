"""Audit records and reader feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.audit.models import BigId, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("input_sha256", sa.String(64)),
        sa.Column("input_format", sa.String(16)),
        sa.Column("input_bytes", sa.BigInteger()),
        sa.Column("study_uid_hash", sa.String(64)),
        sa.Column("series_uid_hash", sa.String(64)),
        sa.Column("sop_uid_hash", sa.String(64)),
        sa.Column("gate_score", sa.Float()),
        sa.Column("model_name", sa.String(100)),
        sa.Column("model_version", sa.String(32)),
        sa.Column("model_sha256", sa.String(64)),
        sa.Column("runtime", sa.String(64)),
        sa.Column("probabilities", sa.JSON()),
        sa.Column("p_positive", sa.Float()),
        sa.Column("decision", sa.String(64)),
        sa.Column("threshold", sa.Float()),
        sa.Column("timings", sa.JSON()),
    )
    op.create_index("ix_audit_records_request_id", "audit_records", ["request_id"])
    op.create_index("ix_audit_records_created_at", "audit_records", ["created_at"])
    op.create_table(
        "audit_feedback",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("record_id", BigId, sa.ForeignKey("audit_records.id", ondelete="CASCADE"), nullable=False),
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("reader_id", sa.String(64)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_audit_feedback_record_id", "audit_feedback", ["record_id"])
    op.create_index("ix_audit_feedback_request_id", "audit_feedback", ["request_id"])


def downgrade() -> None:
    op.drop_table("audit_feedback")
    op.drop_table("audit_records")
