"""The schema, as SQLAlchemy Core tables: what the Alembic revisions create, in one place.

Times are epoch seconds (a float) on every backend: portable, and compared without time zones.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "calls",
    "feedback",
    "feedback_history",
    "job_items",
    "jobs",
    "metadata",
    "program_versions",
    "rollouts",
]

metadata = MetaData()

# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text on SQLite; None is SQL NULL.
Document = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

calls = Table(
    "calls",
    metadata,
    Column("call_id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),  # when the call was admitted
    Column("program", String(200), nullable=False),
    Column("version", String(64)),  # the sha256 of the version that answered (its artifact's)
    Column("version_name", String(200)),  # that version's name ("v2"), as X-Program-Version says
    Column("key_name", String(200)),
    Column("wire", String(32), nullable=False),
    Column("request_id", String(200)),
    Column("model", String(200)),
    Column("inputs", Document, nullable=False),
    Column("options", Document, nullable=False),
    Column("outputs", Document),
    Column("error_code", String(100)),
    Column("usage", Document, nullable=False),
    Column("cost_usd", Float),
    Column("latency_s", Float, nullable=False),
    Column("trace", Document),
    # False when the call was not sampled and was stored only because feedback came for it.
    Column("sampled", Boolean, nullable=False),
    # A shadow run (#27): the call_id of the served call whose inputs it ran on; its answer was
    # recorded, never returned.
    Column("shadow_of", String(64)),
    Index("ix_calls_program_created", "program", "created_at"),
    Index("ix_calls_shadow_of", "shadow_of"),
    Index("ix_calls_created", "created_at"),
    Index("ix_calls_key", "key_name"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False),
    Column("key_name", String(200), nullable=False),  # "" without API keys
    Column("score", Float),  # true/false are stored as 1.0/0.0
    Column("outputs", Document),  # the correction
    Column("comment", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("call_id", "key_name", name="uq_feedback_call_key"),
)

# Every value a feedback row held before it was replaced: users double-click and change their minds.
feedback_history = Table(
    "feedback_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), ForeignKey("calls.call_id", ondelete="CASCADE"), nullable=False),
    Column("key_name", String(200), nullable=False),
    Column("score", Float),
    Column("outputs", Document),
    Column("comment", Text),
    Column("recorded_at", Float, nullable=False),  # when it was given
    Column("superseded_at", Float, nullable=False),
    Index("ix_feedback_history_call", "call_id"),
)

# Durable jobs (#28): one row per job, one per input item; items are claimed by the workers.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("program", String(200), nullable=False),
    Column("key_name", String(200)),  # the owner; None without API keys
    Column("state", String(16), nullable=False),  # queued, running, done, failed, cancelled
    Column("options", Document, nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("cost_usd", Float),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("expires_at", Float),  # set when it finishes: finished_at + job_retention
    Column("webhook", Text),
    Index("ix_jobs_state", "state"),
    Index("ix_jobs_expires", "expires_at"),
)

job_items = Table(
    "job_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("inputs", Document),  # None for an item that failed validation (its result says why)
    Column("state", String(16), nullable=False),  # queued, running, done, failed, cancelled
    Column("claimed_by", String(200)),
    Column("claimed_at", Float),  # the lease: renewed while the item runs
    Column("result", Document),
    Column("call_id", String(64)),
    UniqueConstraint("job_id", "position", name="uq_job_items_position"),
    Index("ix_job_items_state", "state", "claimed_at"),
)

# Program versions (#27), loaded at run time by the admin API: every worker loads the same file.
program_versions = Table(
    "program_versions",
    metadata,
    Column("program", String(200), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("artifact", Text),  # the artifact's path, as the server that loaded it read it
    Column("target", Text),  # the program target, when the version has its own code
    Column("created_at", Float, nullable=False),
)

# A program's rollout: which version is stable, the candidate, the split and the shadow. One row
# per program; ``revision`` grows with every change, so workers notice one with a single read.
rollouts = Table(
    "rollouts",
    metadata,
    Column("program", String(200), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("state", Document, nullable=False),
    Column("updated_at", Float, nullable=False),
)
