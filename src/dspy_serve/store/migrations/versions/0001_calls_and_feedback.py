"""Captured calls, their feedback, and the feedback values each replaced.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("program", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64)),
        sa.Column("key_name", sa.String(200)),
        sa.Column("wire", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(200)),
        sa.Column("model", sa.String(200)),
        sa.Column("inputs", Document, nullable=False),
        sa.Column("options", Document, nullable=False),
        sa.Column("outputs", Document),
        sa.Column("error_code", sa.String(100)),
        sa.Column("usage", Document, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("trace", Document),
        sa.Column("sampled", sa.Boolean, nullable=False),
    )
    op.create_index("ix_calls_program_created", "calls", ["program", "created_at"])
    op.create_index("ix_calls_created", "calls", ["created_at"])
    op.create_index("ix_calls_key", "calls", ["key_name"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(64), sa.ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("outputs", Document),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("call_id", "key_name", name="uq_feedback_call_key"),
    )
    op.create_table(
        "feedback_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "call_id", sa.String(64), sa.ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key_name", sa.String(200), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("outputs", Document),
        sa.Column("comment", sa.Text),
        sa.Column("recorded_at", sa.Float, nullable=False),
        sa.Column("superseded_at", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_history_call", "feedback_history", ["call_id"])


def downgrade() -> None:
    op.drop_table("feedback_history")
    op.drop_table("feedback")
    op.drop_index("ix_calls_key", "calls")
    op.drop_index("ix_calls_created", "calls")
    op.drop_index("ix_calls_program_created", "calls")
    op.drop_table("calls")
