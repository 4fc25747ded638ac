"""Feedback rows: one per (call, key), every replaced value kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import IntegrityError

from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store
from dspy_serve.store import store_url as url_of
from dspy_serve.store.calls import insert_calls
from dspy_serve.store.feedback import feedback_history_of, get_feedback, upsert_feedback
from tests.support.stores import call_row


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url_of(ServeSettings(store=store_url)))
    await insert_calls(opened, [call_row("c1")])
    yield opened
    await opened.close()


async def test_a_second_rating_replaces_the_first_which_goes_to_the_history(store: Store) -> None:
    assert not await upsert_feedback(store, "c1", "", score=1.0, outputs=None, comment=None)
    assert await upsert_feedback(store, "c1", "", score=0.0, outputs={"answer": "Lima"}, comment="no")
    [current] = await get_feedback(store, "c1")
    assert (current["score"], current["outputs"], current["comment"]) == (0.0, {"answer": "Lima"}, "no")
    [old] = await feedback_history_of(store, "c1")
    assert (old["score"], old["outputs"], old["comment"]) == (1.0, None, None)


async def test_simultaneous_clicks_leave_one_row_and_the_rest_in_history(store: Store) -> None:
    await asyncio.gather(
        *(upsert_feedback(store, "c1", "k", score=float(i), outputs=None, comment=None) for i in range(5))
    )
    assert len(await get_feedback(store, "c1")) == 1
    assert len(await feedback_history_of(store, "c1")) == 4


async def test_feedback_needs_its_call_stored_first(store: Store) -> None:
    with pytest.raises(IntegrityError):
        await upsert_feedback(store, "nope", "", score=1.0, outputs=None, comment=None)
