"""Identical deterministic calls in flight at once run the program once: a real uvicorn server,
httpx and the fake LM, whose counters say how many LM calls were made."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM, Malformed, ServerError
from tests.support.metrics import samples
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
ASK = {"inputs": {"question": "Capital of France?"}}
FOLLOWERS = 7


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    # The cache is off: every answer shared here was shared by coalescing alone.
    with serving(create_app(fake_settings(fake_lm, programs=[QA], temperature=0.0))) as running:
        yield running


async def wait_until(fake_lm: FakeLM, predicate: Any) -> None:
    """Wait (off the loop: the fake LM's counters are polled) for the fake LM to see something."""
    assert await asyncio.to_thread(fake_lm.wait_for, predicate, 10.0)


async def leader_then_followers(
    server: ServerThread, fake_lm: FakeLM, http: httpx.AsyncClient, path: str = "/qa/invoke"
) -> tuple[asyncio.Task[httpx.Response], list[asyncio.Task[httpx.Response]]]:
    """One call that reaches the LM, then identical calls sent while it is in flight."""
    leader = asyncio.create_task(http.post(server.base_url + path, json=ASK))
    await wait_until(fake_lm, lambda: fake_lm.requests_started == 1)
    followers = [asyncio.create_task(http.post(server.base_url + path, json=ASK)) for _ in range(FOLLOWERS)]
    await asyncio.sleep(0.5)  # they reach the server and join the call in flight
    return leader, followers


async def test_identical_calls_in_flight_make_one_lm_call(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.latency = 2.0
    async with httpx.AsyncClient(timeout=30) as http:
        leader, followers = await leader_then_followers(server, fake_lm, http)
        first, *others = await asyncio.gather(leader, *followers)
        metrics = samples((await http.get(server.base_url + "/metrics")).text)
    assert fake_lm.requests_started == 1
    assert [r.status_code for r in (first, *others)] == [200] * (FOLLOWERS + 1)
    assert all(r.json()["outputs"] == first.json()["outputs"] for r in others)
    # The LM was called once: its usage is the first caller's; the others spent nothing.
    assert first.json()["usage"] and all(r.json()["usage"] == {} for r in others)
    assert "x-coalesced" not in first.headers and first.headers["x-cache"] == "miss"
    assert all(r.headers["x-coalesced"] == "true" and r.headers["x-cache"] == "hit" for r in others)
    assert metrics[("dspy_serve_coalesced_calls_total", ())] == FOLLOWERS
    assert metrics[("dspy_serve_lm_calls_total", (("model", "openai/fake-model"),))] == 1


async def test_the_first_caller_leaving_does_not_cancel_the_call(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.latency = 2.0
    async with httpx.AsyncClient(timeout=30) as http:
        leader, followers = await leader_then_followers(server, fake_lm, http)
        leader.cancel()  # its connection closes: the server sees the client leave
        answers = await asyncio.gather(*followers)
    assert [r.status_code for r in answers] == [200] * FOLLOWERS
    assert fake_lm.requests_started == 1 and fake_lm.requests_disconnected == 0


async def test_the_call_stops_when_its_last_waiter_leaves(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.latency = 5.0
    async with httpx.AsyncClient(timeout=30) as http:
        leader, followers = await leader_then_followers(server, fake_lm, http)
        for task in (leader, *followers):
            task.cancel()
        await asyncio.gather(leader, *followers, return_exceptions=True)
        await wait_until(fake_lm, lambda: fake_lm.requests_disconnected == 1)
        after = await http.post(server.base_url + "/qa/invoke", json=ASK)
    assert after.status_code == 200 and "x-coalesced" not in after.headers
    assert fake_lm.requests_started == 2


async def test_a_failure_reaches_every_waiter(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.latency = 2.0
    fake_lm.push(ServerError(500))
    async with httpx.AsyncClient(timeout=30) as http:
        leader, followers = await leader_then_followers(server, fake_lm, http)
        answers = await asyncio.gather(leader, *followers)
    assert [r.status_code for r in answers] == [502] * (FOLLOWERS + 1)
    assert {r.json()["code"] for r in answers} == {"upstream_error"}
    assert fake_lm.requests_started == 1


async def test_a_failure_after_spending_reports_the_tokens_to_the_first_caller_only(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.latency = 2.0
    fake_lm.when("France", Malformed())  # the LM answers, unparseably: tokens spent, then a 502
    async with httpx.AsyncClient(timeout=30) as http:
        leader, followers = await leader_then_followers(server, fake_lm, http)
        first, *others = await asyncio.gather(leader, *followers)
    assert [r.status_code for r in (first, *others)] == [502] * (FOLLOWERS + 1)
    assert first.json()["usage"]
    assert all("usage" not in r.json() and r.json()["code"] == first.json()["code"] for r in others)


async def test_batch_items_and_chat_completions_coalesce_too(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.latency = 2.0
    chat = {"model": "qa", "messages": [{"role": "user", "content": "Capital of France?"}]}
    async with httpx.AsyncClient(timeout=30) as http:
        batch = await http.post(server.base_url + "/qa/batch", json={"items": [ASK["inputs"]] * 4})
        leader = asyncio.create_task(http.post(server.base_url + "/qa/invoke", json=ASK))
        await wait_until(fake_lm, lambda: fake_lm.requests_started == 2)
        completion = await http.post(server.base_url + "/v1/chat/completions", json=chat)
        await leader
    assert batch.status_code == 200 and batch.headers["x-coalesced"] == "true"
    assert [bool(item["usage"]) for item in batch.json()["items"]].count(True) == 1
    assert completion.status_code == 200, completion.text
    assert completion.headers["x-coalesced"] == "true"
    assert fake_lm.requests_started == 2


async def test_no_cache_runs_its_own_call(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.latency = 1.0
    async with httpx.AsyncClient(timeout=30) as http:
        leader = asyncio.create_task(http.post(server.base_url + "/qa/invoke", json=ASK))
        await wait_until(fake_lm, lambda: fake_lm.requests_started == 1)
        fresh = await http.post(
            server.base_url + "/qa/invoke", json=ASK, headers={"Cache-Control": "no-cache"}
        )
        await leader
    assert fresh.status_code == 200 and fresh.json()["usage"]
    assert fake_lm.requests_started == 2


async def test_calls_at_another_temperature_do_not_coalesce(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 1.0
    with serving(create_app(fake_settings(fake_lm, programs=[QA]))) as server:
        async with httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post(server.base_url + "/qa/invoke", json=ASK) for _ in range(3))
            )
    assert [r.status_code for r in answers] == [200] * 3
    assert all("x-cache" not in r.headers for r in answers)
    assert fake_lm.requests_started == 3
