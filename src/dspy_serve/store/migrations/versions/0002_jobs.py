"""Durable jobs and their items (#28).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("key_name", sa.String(200)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("options", Document, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("expires_at", sa.Float),
        sa.Column("webhook", sa.Text),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_expires", "jobs", ["expires_at"])
    op.create_table(
        "job_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("inputs", Document),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("claimed_at", sa.Float),
        sa.Column("result", Document),
        sa.Column("call_id", sa.String(64)),
        sa.UniqueConstraint("job_id", "position", name="uq_job_items_position"),
    )
    op.create_index("ix_job_items_state", "job_items", ["state", "claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_job_items_state", "job_items")
    op.drop_table("job_items")
    op.drop_index("ix_jobs_expires", "jobs")
    op.drop_index("ix_jobs_state", "jobs")
    op.drop_table("jobs")
