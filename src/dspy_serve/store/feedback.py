"""Feedback on a call: one current row per (call, key), every replaced value kept in history."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from dspy_serve.store.database import Store
from dspy_serve.store.tables import feedback, feedback_history

__all__ = ["feedback_history_of", "get_feedback", "upsert_feedback"]


async def upsert_feedback(
    store: Store,
    call_id: str,
    key_name: str,
    *,
    score: float | None,
    outputs: Mapping[str, Any] | None,
    comment: str | None,
) -> bool:
    """Record feedback; the values it replaces go to the history. Returns True when it replaced
    earlier feedback (a double-click, a change of mind). The call must be stored already."""
    for attempt in range(2):
        try:
            return await _upsert_once(store, call_id, key_name, score, outputs, comment)
        except IntegrityError:
            # Two clicks raced to insert the first row: the loser updates the winner's.
            if attempt:
                raise
    raise AssertionError("unreachable")


async def _upsert_once(
    store: Store,
    call_id: str,
    key_name: str,
    score: float | None,
    outputs: Mapping[str, Any] | None,
    comment: str | None,
) -> bool:
    now = time.time()
    values = {"score": score, "outputs": dict(outputs) if outputs is not None else None, "comment": comment}
    mine = (feedback.c.call_id == call_id) & (feedback.c.key_name == key_name)
    async with store.engine.begin() as connection:
        query = select(feedback).where(mine)
        if store.dialect == "postgresql":
            query = query.with_for_update()
        current = (await connection.execute(query)).mappings().first()
        if current is None:
            await connection.execute(
                insert(feedback).values(
                    call_id=call_id, key_name=key_name, created_at=now, updated_at=now, **values
                )
            )
            return False
        await connection.execute(
            insert(feedback_history).values(
                call_id=call_id,
                key_name=key_name,
                score=current["score"],
                outputs=current["outputs"],
                comment=current["comment"],
                recorded_at=current["updated_at"],
                superseded_at=now,
            )
        )
        await connection.execute(update(feedback).where(mine).values(updated_at=now, **values))
        return True


async def get_feedback(store: Store, call_id: str) -> list[dict[str, Any]]:
    async with store.engine.connect() as connection:
        rows = (await connection.execute(select(feedback).where(feedback.c.call_id == call_id))).mappings()
        return [dict(row) for row in rows]


async def feedback_history_of(store: Store, call_id: str) -> list[dict[str, Any]]:
    """The values each feedback row of a call held before it was replaced, oldest first."""
    query = (
        select(feedback_history).where(feedback_history.c.call_id == call_id).order_by(feedback_history.c.id)
    )
    async with store.engine.connect() as connection:
        return [dict(row) for row in (await connection.execute(query)).mappings()]
