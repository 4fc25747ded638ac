"""``dspy-serve data stats``: counts by program, version and day, read as a stream (flat memory)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from dspy_serve.store import Store
from dspy_serve.store.calls import stream_rows
from dspy_serve.store.tables import calls, feedback

__all__ = ["dataset_stats"]


async def dataset_stats(store: Store, program: str | None = None) -> list[dict[str, Any]]:
    query = select(
        calls.c.program,
        calls.c.version,
        calls.c.created_at,
        calls.c.error_code,
        feedback.c.score,
        feedback.c.outputs.is_not(None).label("corrected"),
    ).select_from(calls.outerjoin(feedback, feedback.c.call_id == calls.c.call_id))
    if program is not None:
        query = query.where(calls.c.program == program)
    groups: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    async for row in stream_rows(store, query):
        day = time.strftime("%Y-%m-%d", time.gmtime(row["created_at"]))
        group = groups.setdefault(
            (row["program"], row["version"], day),
            {"program": row["program"], "version": row["version"], "day": day, "calls": 0, "errors": 0,
             "rated": 0, "score_sum": 0.0, "corrected": 0},
        )  # fmt: skip
        group["calls"] += 1
        group["errors"] += row["error_code"] is not None
        if row["score"] is not None:
            group["rated"] += 1
            group["score_sum"] += row["score"]
        group["corrected"] += bool(row["corrected"])
    result = []
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[1] or "")):
        group = groups[key]
        total = group.pop("score_sum")
        group["mean_score"] = total / group["rated"] if group["rated"] else None
        result.append(group)
    return result
