"""Jobs in the store: claims that never hand one item to two workers, leases that expire,
results in input order, cancel and retention (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store
from dspy_serve.store import store_url as url_of
from dspy_serve.store.jobs import (
    JobItem,
    cancel_job,
    claim_items,
    create_job,
    finish_item,
    get_job,
    remove_expired,
    results_from,
)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url_of(ServeSettings(store=store_url)))
    yield opened
    await opened.close()


async def _job(store: Store, n: int) -> str:
    items = [JobItem({"question": f"q{i}"}) for i in range(n)]
    return await create_job(store, program="qa", key_name="alice", options={}, items=items)


async def test_concurrent_claimers_never_take_the_same_item(store_url: str) -> None:
    """Four stores (four engines, as four processes would have) claim 60 items at once."""
    stores = [await Store.open(url_of(ServeSettings(store=store_url))) for _ in range(4)]
    try:
        job = await _job(stores[0], 60)

        async def drain(store: Store, worker: str) -> list[int]:
            taken: list[int] = []
            while batch := await claim_items(store, worker, 7, lease_s=60):
                assert len(batch) <= 7
                taken += [item.position for item in batch]
            return taken

        taken = await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate(stores)))
        everything = [position for positions in taken for position in positions]
        assert sorted(everything) == list(range(60))  # each item once, none left out
        state = await get_job(stores[0], job)
        assert state is not None and state["state"] == "running" and state["started_at"] is not None
    finally:
        for s in stores:
            await s.close()


async def test_an_item_whose_lease_expired_is_claimed_again_and_only_its_new_owner_records_it(
    store: Store,
) -> None:
    await _job(store, 1)
    [first] = await claim_items(store, "dead", 5, lease_s=60)
    assert await claim_items(store, "alive", 5, lease_s=60) == []
    await asyncio.sleep(0.05)
    [again] = await claim_items(store, "alive", 5, lease_s=0.01)
    assert again.id == first.id
    late = await finish_item(
        store, "dead", first, state="done", result={"outputs": {}}, call_id="x", tokens=1, cost_usd=None,
        retention_s=60,
    )  # fmt: skip
    assert late is None
    job = await get_job(store, first.job_id)
    assert job is not None and job["done"] == 0
    ended = await finish_item(
        store, "alive", again, state="done", result={"outputs": {"answer": "a"}}, call_id="c", tokens=10,
        cost_usd=0.5, retention_s=60,
    )  # fmt: skip
    assert ended is not None and ended["state"] == "done" and ended["tokens"] == 10
    assert ended["cost_usd"] == 0.5 and ended["expires_at"] > time.time()


async def test_results_are_a_prefix_in_input_order_up_to_the_first_unfinished_item(store: Store) -> None:
    items = [
        JobItem({"question": "a"}),
        JobItem(None, error={"code": "invalid_input"}),
        JobItem({"question": "c"}),
    ]
    job = await create_job(store, program="qa", key_name=None, options={}, items=items)
    claimed = await claim_items(store, "w", 5, lease_s=60)
    assert [item.position for item in claimed] == [0, 2]  # the invalid item is failed already
    await finish_item(
        store, "w", claimed[1], state="done", result={"outputs": 2}, call_id="c2", tokens=0, cost_usd=None,
        retention_s=60,
    )  # fmt: skip
    end, rows = await results_from(store, job, 0)
    assert end == 0 and [row async for row in rows] == []
    await finish_item(
        store, "w", claimed[0], state="done", result={"outputs": 0}, call_id="c0", tokens=0, cost_usd=None,
        retention_s=60,
    )  # fmt: skip
    end, rows = await results_from(store, job, 0)
    assert end == 3 and [row["position"] async for row in rows] == [0, 1, 2]
    end, rows = await results_from(store, job, 2)
    assert end == 3 and [row["result"] async for row in rows] == [{"outputs": 2}]


async def test_cancel_stops_the_queued_items_and_retention_removes_the_job(store: Store) -> None:
    job = await _job(store, 3)
    assert await cancel_job(store, job, retention_s=0.0)
    assert not await cancel_job(store, job, retention_s=0.0)
    assert await claim_items(store, "w", 5, lease_s=60) == []
    end, rows = await results_from(store, job, 0)
    assert end == 3 and {row["state"] async for row in rows} == {"cancelled"}
    assert await remove_expired(store, now=time.time() + 1) == 1
    assert await get_job(store, job) is None
