"""Who asked (the caller's key name or token subject, never the credential) and which site calibration and
operating point decided the answer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("caller", sa.String(128)))
        batch.add_column(sa.Column("operating_point", sa.String(32)))
        batch.add_column(sa.Column("calibration", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("calibration")
        batch.drop_column("operating_point")
        batch.drop_column("caller")
