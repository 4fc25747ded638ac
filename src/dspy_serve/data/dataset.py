"""Which captured calls make a dataset, and each as one labelled row: its inputs, the outputs it
served, the correction and score it got. Rows stream from the database, memory stays flat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Select, and_, or_, select

from dspy_serve.store import Store
from dspy_serve.store.calls import stream_rows
from dspy_serve.store.tables import calls, feedback

__all__ = ["DataQuery", "dataset_rows", "label_of"]


@dataclass(frozen=True)
class DataQuery:
    """The calls of one program that a dataset holds: successful or corrected ones, by default all."""

    program: str
    since: float | None = None  # epoch seconds
    min_score: float | None = None
    corrected_only: bool = False

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def select(self) -> Select[Any]:
        joined = calls.outerjoin(feedback, feedback.c.call_id == calls.c.call_id)
        conditions = [
            calls.c.program == self.program,
            # A row needs a label: the served outputs or a correction.
            or_(calls.c.outputs.is_not(None), feedback.c.outputs.is_not(None)),
        ]
        if self.since is not None:
            conditions.append(calls.c.created_at >= self.since)
        if self.min_score is not None:
            conditions.append(feedback.c.score >= self.min_score)
        if self.corrected_only:
            conditions.append(feedback.c.outputs.is_not(None))
        return (
            select(
                calls.c.call_id,
                calls.c.created_at,
                calls.c.version,
                calls.c.key_name,
                calls.c.inputs,
                calls.c.outputs,
                calls.c.trace,
                feedback.c.outputs.label("correction"),
                feedback.c.score,
                feedback.c.comment,
            )
            .select_from(joined)
            .where(and_(*conditions))
            .order_by(calls.c.created_at, calls.c.call_id)
        )


async def dataset_rows(store: Store, query: DataQuery) -> AsyncIterator[dict[str, Any]]:
    """One row per call, oldest first. The JSON NULL of SQLite and PostgreSQL reads as None."""
    async for row in stream_rows(store, query.select()):
        yield {
            "call_id": row["call_id"],
            "created_at": row["created_at"],
            "version": row["version"],
            "key_name": row["key_name"],
            "inputs": row["inputs"],
            "outputs": row["outputs"],
            "correction": row["correction"],
            "score": row["score"],
            "comment": row["comment"],
            "trace": row["trace"],
        }


def label_of(row: dict[str, Any]) -> dict[str, Any]:
    """What the program should have answered: the served outputs, with the correction's fields over them."""
    return {**(row.get("outputs") or {}), **(row.get("correction") or {})}
