"""Durable jobs: a job row, one row per input item, and the claims workers take on items.

**Each item runs once under several workers.** A worker claims queued items by moving them to
``running`` with its name and the time (the lease) in one statement:

- on PostgreSQL, ``UPDATE ... WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED)``: concurrent
  claimers skip each other's rows instead of waiting for them, and never take the same one;
- on SQLite, the same ``UPDATE ... WHERE state = 'queued' ... RETURNING`` in one write
  transaction: SQLite lets one writer at a time hold the database (the others wait, up to
  ``busy_timeout``), so a second claimer sees the rows already ``running`` and skips them.

A worker renews the lease of the items it runs (:func:`renew_leases`); an item whose lease is
older than ``lease_s`` (its worker died) is claimed again. A worker only writes an item's result
while the item is still its own, so an answer is recorded once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select, update

from dspy_serve.errors import JobCancelled
from dspy_serve.store.database import Store
from dspy_serve.store.tables import job_items, jobs

__all__ = [
    "ClaimedItem",
    "JobItem",
    "cancel_job",
    "claim_items",
    "create_job",
    "finish_item",
    "get_job",
    "job_states",
    "list_jobs",
    "release_items",
    "remove_expired",
    "renew_leases",
    "results_from",
]

ACTIVE = ("queued", "running")
FINISHED_ITEM = ("done", "failed", "cancelled")
_INSERT_ROWS = 500


@dataclass(frozen=True)
class JobItem:
    """One input of a new job: its inputs, or the error (problem document) that refused it."""

    inputs: dict[str, Any] | None
    error: dict[str, Any] | None = None
    call_id: str | None = None


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    job_id: str
    position: int
    inputs: dict[str, Any]


async def create_job(
    store: Store,
    *,
    program: str,
    key_name: str | None,
    options: Mapping[str, Any],
    items: Sequence[JobItem],
    webhook: str | None = None,
    retention_s: float = 86400.0,
) -> str:
    """A queued job of ``items``; an item that failed validation is stored failed already (with
    its error as its result). Returns the job's id."""
    job_id = uuid.uuid4().hex
    now = time.time()
    failed = sum(1 for item in items if item.error is not None)
    over = failed == len(items)  # nothing to run: every item was invalid
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(jobs).values(
                id=job_id,
                program=program,
                key_name=key_name,
                state="failed" if over else "queued",
                options=dict(options),
                total=len(items),
                done=0,
                failed=failed,
                tokens=0,
                cost_usd=None,
                created_at=now,
                finished_at=now if over else None,
                expires_at=now + retention_s if over else None,
                webhook=webhook,
            )
        )
        rows = [
            {
                "job_id": job_id,
                "position": position,
                "inputs": item.inputs,
                "state": "queued" if item.error is None else "failed",
                "result": None if item.error is None else {"error": item.error},
                "call_id": item.call_id,
            }
            for position, item in enumerate(items)
        ]
        for start in range(0, len(rows), _INSERT_ROWS):
            await connection.execute(insert(job_items), rows[start : start + _INSERT_ROWS])
    return job_id


async def get_job(store: Store, job_id: str) -> dict[str, Any] | None:
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
    return dict(row) if row is not None else None


async def list_jobs(
    store: Store, *, key_name: str | None, everyone: bool, limit: int
) -> list[dict[str, Any]]:
    """The newest jobs of one owner (of every owner with ``everyone``), newest first."""
    query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if not everyone:
        query = query.where(jobs.c.key_name == key_name)
    async with store.engine.connect() as connection:
        return [dict(row) for row in (await connection.execute(query)).mappings()]


async def job_states(store: Store, job_ids: Sequence[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    async with store.engine.connect() as connection:
        rows = await connection.execute(select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(list(job_ids))))
        return {row.id: row.state for row in rows}


async def claim_items(store: Store, worker: str, limit: int, *, lease_s: float) -> list[ClaimedItem]:
    """Up to ``limit`` items of active jobs, queued or with an expired lease, now this worker's."""
    now = time.time()
    claimable = or_(
        job_items.c.state == "queued",
        and_(job_items.c.state == "running", job_items.c.claimed_at < now - lease_s),
    )
    chosen = (
        select(job_items.c.id)
        .join(jobs, jobs.c.id == job_items.c.job_id)
        .where(claimable, jobs.c.state.in_(ACTIVE))
        .order_by(jobs.c.created_at, job_items.c.position)
        .limit(limit)
    )
    if store.dialect == "postgresql":
        # A CTE, evaluated once: PostgreSQL may run an `IN (SELECT ... LIMIT n)` subquery more
        # than once per UPDATE, and claim more than n rows.
        picked = chosen.with_for_update(skip_locked=True, of=job_items).cte("picked")
        where = job_items.c.id == picked.c.id
    else:
        where = job_items.c.id.in_(chosen.scalar_subquery())
    claim = (
        update(job_items)
        .where(where, claimable)
        .values(state="running", claimed_by=worker, claimed_at=now)
        .returning(job_items.c.id, job_items.c.job_id, job_items.c.position, job_items.c.inputs)
    )
    async with store.engine.connect() as connection:
        # A read first: an idle worker polls often, and on SQLite a write would take the one lock.
        if (await connection.execute(chosen.limit(1))).first() is None:
            return []
    async with store.engine.begin() as connection:
        claimed = [ClaimedItem(*row) for row in await connection.execute(claim)]
        job_ids = sorted({item.job_id for item in claimed})
        if job_ids:
            await connection.execute(
                update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.state == "queued")
                .values(state="running", started_at=now)
            )
    return sorted(claimed, key=lambda item: (item.job_id, item.position))


async def release_items(store: Store, worker: str) -> int:
    """Hand this worker's running items back to the queue (it is stopping): the next worker
    claims them at once instead of after their lease."""
    async with store.engine.begin() as connection:
        released = await connection.execute(
            update(job_items)
            .where(job_items.c.claimed_by == worker, job_items.c.state == "running")
            .values(state="queued", claimed_by=None, claimed_at=None)
        )
    return int(released.rowcount or 0)


async def renew_leases(store: Store, worker: str, item_ids: Sequence[int]) -> None:
    if not item_ids:
        return
    async with store.engine.begin() as connection:
        await connection.execute(
            update(job_items)
            .where(job_items.c.id.in_(list(item_ids)), job_items.c.claimed_by == worker)
            .values(claimed_at=time.time())
        )


async def finish_item(
    store: Store,
    worker: str,
    item: ClaimedItem,
    *,
    state: str,
    result: Mapping[str, Any],
    call_id: str | None,
    tokens: int,
    cost_usd: float | None,
    retention_s: float,
) -> dict[str, Any] | None:
    """Record an item's result, if the item is still this worker's, and count it in its job.
    Returns the job when this item was its last (it is then done, failed or cancelled)."""
    now = time.time()
    mine = and_(job_items.c.id == item.id, job_items.c.claimed_by == worker, job_items.c.state == "running")
    async with store.engine.begin() as connection:
        written = await connection.execute(
            update(job_items).where(mine).values(state=state, result=dict(result), call_id=call_id)
        )
        if not written.rowcount:
            return None  # its lease expired and another worker has it now
        counted = jobs.c.failed + 1 if state == "failed" else jobs.c.failed
        await connection.execute(
            update(jobs)
            .where(jobs.c.id == item.job_id)
            .values(
                done=jobs.c.done + (1 if state == "done" else 0),
                failed=counted,
                tokens=jobs.c.tokens + tokens,
                cost_usd=(func.coalesce(jobs.c.cost_usd, 0.0) + cost_usd)
                if cost_usd is not None
                else jobs.c.cost_usd,
            )
        )
        ended = and_(
            jobs.c.id == item.job_id, jobs.c.state.in_(ACTIVE), jobs.c.done + jobs.c.failed >= jobs.c.total
        )
        closing = await connection.execute(
            update(jobs)
            .where(ended)
            .values(
                state=case((jobs.c.done == 0, "failed"), else_="done"),
                finished_at=now,
                expires_at=now + retention_s,
            )
        )
        if not closing.rowcount:
            return None
        row = (await connection.execute(select(jobs).where(jobs.c.id == item.job_id))).mappings().first()
    return dict(row) if row is not None else None


async def cancel_job(store: Store, job_id: str, *, retention_s: float) -> bool:
    """Mark an active job cancelled and its queued items too (running ones are cancelled by
    their workers, which poll the job's state). False when it had already ended."""
    now = time.time()
    async with store.engine.begin() as connection:
        changed = await connection.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE))
            .values(state="cancelled", finished_at=now, expires_at=now + retention_s)
        )
        if not changed.rowcount:
            return False
        await connection.execute(
            update(job_items)
            .where(job_items.c.job_id == job_id, job_items.c.state == "queued")
            .values(state="cancelled", result={"error": _cancelled_problem()})
        )
    return True


def _cancelled_problem() -> dict[str, Any]:
    return JobCancelled("The job was cancelled before this item ran.").problem()


async def results_from(store: Store, job_id: str, offset: int) -> tuple[int, AsyncIterator[dict[str, Any]]]:
    """The finished items from ``offset`` on, in order, up to the first unfinished one: where
    they end (the next offset to ask for), and the rows, streamed."""
    async with store.engine.connect() as connection:
        first_open = (
            await connection.execute(
                select(func.min(job_items.c.position)).where(
                    job_items.c.job_id == job_id,
                    job_items.c.position >= offset,
                    job_items.c.state.not_in(FINISHED_ITEM),
                )
            )
        ).scalar()
        if first_open is None:
            first_open = (
                await connection.execute(
                    select(func.count()).select_from(job_items).where(job_items.c.job_id == job_id)
                )
            ).scalar() or 0
    end = max(int(first_open), offset)
    query = (
        select(job_items.c.position, job_items.c.state, job_items.c.result, job_items.c.call_id)
        .where(job_items.c.job_id == job_id, job_items.c.position >= offset, job_items.c.position < end)
        .order_by(job_items.c.position)
    )
    return end, _stream(store, query)


async def _stream(store: Store, query: Any) -> AsyncIterator[dict[str, Any]]:
    async with store.engine.connect() as connection:
        result = await connection.stream(query.execution_options(yield_per=500))
        async for row in result.mappings():
            yield dict(row)


async def remove_expired(store: Store, now: float | None = None) -> int:
    """Retention: jobs whose results are past their time go, with their items."""
    now = time.time() if now is None else now
    expired = select(jobs.c.id).where(jobs.c.expires_at < now)
    async with store.engine.begin() as connection:
        await connection.execute(delete(job_items).where(job_items.c.job_id.in_(expired.scalar_subquery())))
        removed = await connection.execute(delete(jobs).where(jobs.c.expires_at < now))
    return int(removed.rowcount or 0)
