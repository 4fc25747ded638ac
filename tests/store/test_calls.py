"""Captured calls in the store: written idempotently, pruned by age and count, deleted per user."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store
from dspy_serve.store import store_url as url_of
from dspy_serve.store.calls import count_calls, delete_calls, get_call, insert_calls, prune_calls
from dspy_serve.store.feedback import get_feedback, upsert_feedback
from tests.support.stores import call_row


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url_of(ServeSettings(store=store_url)))
    yield opened
    await opened.close()


async def test_a_call_written_twice_is_kept_as_first_written(store: Store) -> None:
    await insert_calls(store, [call_row("c1", outputs={"answer": "first"})])
    await insert_calls(store, [call_row("c1", outputs={"answer": "second"}), call_row("c2")])
    first = await get_call(store, "c1")
    assert first is not None and first["outputs"] == {"answer": "first"}
    assert first["inputs"] == {"question": "question c1?"}
    assert await count_calls(store) == 2


async def test_retention_deletes_calls_past_their_age_with_their_feedback(store: Store) -> None:
    now = time.time()
    await insert_calls(store, [call_row("old", created_at=now - 10 * 86400), call_row("new", created_at=now)])
    await upsert_feedback(store, "old", "", score=1.0, outputs=None, comment=None)
    removed = await prune_calls(store, max_age_s=7 * 86400, max_rows=None, now=now)
    assert removed == 1
    assert await get_call(store, "old") is None and await get_feedback(store, "old") == []
    assert await get_call(store, "new") is not None


async def test_retention_keeps_only_the_newest_rows_beyond_the_row_limit(store: Store) -> None:
    now = time.time()
    await insert_calls(store, [call_row(f"c{i}", created_at=now - 100 + i) for i in range(10)])
    assert await prune_calls(store, max_age_s=None, max_rows=4, now=now) == 6
    assert await count_calls(store) == 4
    assert await get_call(store, "c9") is not None and await get_call(store, "c5") is None


async def test_deleting_by_key_removes_every_call_of_that_key_and_nothing_else(store: Store) -> None:
    await insert_calls(
        store,
        [call_row("a1", key_name="alice"), call_row("a2", key_name="alice"), call_row("b1", key_name="bob")],
    )
    await upsert_feedback(store, "a1", "alice", score=0.0, outputs=None, comment="wrong")
    assert sorted(await delete_calls(store, key_name="alice")) == ["a1", "a2"]
    assert await count_calls(store) == 1
    assert await delete_calls(store, call_id="b1") == ["b1"]
    assert await count_calls(store) == 0


async def test_documents_are_stored_as_json_whatever_their_values(store: Store) -> None:
    """Encoded by orjson, by json.dumps where orjson refuses (an integer past 64 bits, a key that
    is no string); NaN is null (PostgreSQL's JSONB refuses NaN); None is SQL NULL."""
    inputs = {"question": "Où est Zürich ☃?", "big": 2**70, 1: "one"}
    await insert_calls(
        store, [call_row("c1", inputs=inputs, outputs={"score": float("nan")}, options={"n": 1.5})]
    )
    row = await get_call(store, "c1")
    assert row is not None
    assert row["inputs"] == {"question": "Où est Zürich ☃?", "big": 2**70, "1": "one"}
    assert (row["outputs"], row["options"], row["trace"]) == ({"score": None}, {"n": 1.5}, None)
    async with store.engine.connect() as connection:
        nulls = await connection.execute(text("SELECT trace IS NULL, shadow_of IS NULL FROM calls"))
        assert nulls.one() == (True, True)  # a column the row does not name is NULL too
