"""Program versions and rollouts (#27): the calls say which version answered and which call a
shadow run shadowed; versions and the rollout pointers are shared by every worker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Document = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("calls", sa.Column("version_name", sa.String(200)))
    op.add_column("calls", sa.Column("shadow_of", sa.String(64)))
    op.create_index("ix_calls_shadow_of", "calls", ["shadow_of"])
    op.create_table(
        "program_versions",
        sa.Column("program", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("artifact", sa.Text),
        sa.Column("target", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("program", sa.String(200), primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("state", Document, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    op.drop_table("program_versions")
    op.drop_index("ix_calls_shadow_of", "calls")
    op.drop_column("calls", "shadow_of")
    op.drop_column("calls", "version_name")
