"""Captured calls: written in batches, read one by one or streamed, pruned, deleted."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from dspy_serve.store.database import Store
from dspy_serve.store.tables import calls, feedback, feedback_history

__all__ = [
    "EncodedCall",
    "delete_calls",
    "encode_calls",
    "get_call",
    "insert_calls",
    "insert_encoded",
    "prune_calls",
]

# A call row as the database driver takes it: the table's values in column order, its JSON
# documents already as their text (SQL NULL for None).
EncodedCall = tuple[Any, ...]

_COLUMNS = tuple(column.key for column in calls.columns)
# (column, holds a JSON document) in column order.
_PLAN = tuple((column.key, isinstance(column.type, JSON)) for column in calls.columns)
# The INSERT's SQL text per dialect, compiled once.
_INSERT_SQL: dict[str, str] = {}


def insert_ignoring_duplicates(store: Store, table: Any, *key: str) -> Insert:
    """An INSERT that leaves an existing row alone: a call may be written by capture and by the
    feedback that came for it first, in either order."""
    dialect = postgresql if store.dialect == "postgresql" else sqlite
    statement: Any = dialect.insert(table)
    return statement.on_conflict_do_nothing(index_elements=list(key))  # type: ignore[no-any-return]


async def insert_calls(store: Store, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write captured calls in one transaction; a call already stored is kept as it is."""
    await insert_encoded(store, encode_calls(rows))


def encode_calls(rows: Iterable[Mapping[str, Any]]) -> list[EncodedCall]:
    """Rows for :func:`insert_encoded` (a column a row lacks is NULL; keys that are no column are
    left out). Capture runs it in the worker thread that makes the rows: SQLAlchemy's own
    parameter processing would encode every document on the event loop, at ~20 us a row
    (docs/benchmarks.md, capture)."""
    return [
        tuple([_document(row.get(key)) if document else row.get(key) for key, document in _PLAN])
        for row in rows
    ]


async def insert_encoded(store: Store, encoded: Sequence[EncodedCall]) -> None:
    """Write encoded calls (:func:`encode_calls`) in one transaction, one driver ``executemany``;
    a call already stored is kept as it is."""
    if not encoded:
        return
    async with store.engine.begin() as connection:
        await connection.exec_driver_sql(_insert_sql(store), list(encoded))


def _document(value: Any) -> str | None:
    """A JSON column's value as its text (None is SQL NULL, as ``none_as_null`` says). orjson
    (a dependency of DSPy) takes a twentieth of ``json.dumps``'s time; what it refuses (an
    integer past 64 bits, a key that is no string) is written by ``json.dumps``, and NaN is
    null, which PostgreSQL's JSONB takes (it refuses ``NaN``)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def _insert_sql(store: Store) -> str:
    sql = _INSERT_SQL.get(store.dialect)
    if sql is None:
        statement = insert_ignoring_duplicates(store, calls, "call_id")
        compiled = statement.compile(dialect=store.engine.dialect, column_keys=list(_COLUMNS))
        if tuple(compiled.positiontup or ()) != _COLUMNS:  # a driver with named parameters
            raise RuntimeError(f"the {store.dialect} driver does not take positional parameters")
        sql = _INSERT_SQL[store.dialect] = str(compiled)
    return sql


async def get_call(store: Store, call_id: str) -> dict[str, Any] | None:
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(calls).where(calls.c.call_id == call_id))).mappings().first()
    return dict(row) if row is not None else None


async def prune_calls(
    store: Store, *, max_age_s: float | None, max_rows: int | None, now: float | None = None
) -> int:
    """Retention: delete calls older than ``max_age_s`` and all but the newest ``max_rows``
    (with their feedback). Returns how many calls went."""
    now = time.time() if now is None else now
    removed = 0
    async with store.engine.begin() as connection:
        if max_age_s is not None:
            removed += await _delete_where(connection, calls.c.created_at < now - max_age_s)
        if max_rows is not None:
            # The created_at of the newest row beyond the limit: it and everything older go.
            cutoff = (
                await connection.execute(
                    select(calls.c.created_at).order_by(calls.c.created_at.desc()).offset(max_rows).limit(1)
                )
            ).scalar()
            if cutoff is not None:
                removed += await _delete_where(connection, calls.c.created_at <= cutoff)
    return removed


async def delete_calls(store: Store, *, call_id: str | None = None, key_name: str | None = None) -> list[str]:
    """Remove one call, or every call made with one API key, and their feedback: a user's
    right to be forgotten. Returns the ids removed."""
    if (call_id is None) == (key_name is None):
        raise ValueError("give exactly one of call_id and key_name")
    where = calls.c.call_id == call_id if call_id is not None else calls.c.key_name == key_name
    async with store.engine.begin() as connection:
        ids = list((await connection.execute(select(calls.c.call_id).where(where))).scalars())
        for chunk in _chunks(ids, 500):
            await connection.execute(delete(feedback_history).where(feedback_history.c.call_id.in_(chunk)))
            await connection.execute(delete(feedback).where(feedback.c.call_id.in_(chunk)))
            await connection.execute(delete(calls).where(calls.c.call_id.in_(chunk)))
    return ids


async def count_calls(store: Store, program: str | None = None) -> int:
    query = select(func.count()).select_from(calls)
    if program is not None:
        query = query.where(calls.c.program == program)
    async with store.engine.connect() as connection:
        return int((await connection.execute(query)).scalar() or 0)


async def stream_rows(store: Store, query: Select[Any], batch: int = 500) -> AsyncIterator[dict[str, Any]]:
    """Rows of ``query`` as they come, ``batch`` at a time (a server-side cursor on PostgreSQL):
    memory stays flat however many there are."""
    async with store.engine.connect() as connection:
        result = await connection.stream(query.execution_options(yield_per=batch))
        async for row in result.mappings():
            yield dict(row)


async def _delete_where(connection: Any, condition: Any) -> int:
    doomed = select(calls.c.call_id).where(condition).scalar_subquery()
    await connection.execute(delete(feedback_history).where(feedback_history.c.call_id.in_(doomed)))
    await connection.execute(delete(feedback).where(feedback.c.call_id.in_(doomed)))
    result = await connection.execute(delete(calls).where(condition))
    return int(result.rowcount or 0)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
