"""Rate limits per caller, in memory and in a real Redis shared by two app instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import redis

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM
from tests.support.settings import PROGRAMS, fake_settings

ASK = {"inputs": {"question": "Capital of France?"}}
QA = f"qa={PROGRAMS / 'serving.py'}:qa"


async def clients(fake: FakeLM, count: int = 1, **settings: Any) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` app instances with the same settings: several workers sharing one storage."""
    async with AsyncExitStack() as stack:
        http = []
        for _ in range(count):
            app = create_app(fake_settings(fake, programs=[QA], **settings))
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            http.append(
                await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t"))
            )
        yield http


async def test_requests_over_the_limit_get_429_with_headers(fake_lm: FakeLM, provider_key: str) -> None:
    async for (http,) in clients(fake_lm, rate_limit="2/minute"):
        first = await http.post("/qa/invoke", json=ASK)
        second = await http.post("/qa/invoke", json=ASK)
        third = await http.post("/qa/invoke", json=ASK)
    assert first.status_code == second.status_code == 200
    assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("2", "1")
    assert second.headers["ratelimit-remaining"] == "0"
    assert third.status_code == 429
    assert third.json()["code"] == "rate_limited"
    assert 0 < int(third.headers["retry-after"]) <= 60
    assert third.headers["ratelimit-remaining"] == "0"
    assert fake_lm.requests_started == 2


async def test_each_key_has_its_own_budget(fake_lm: FakeLM, provider_key: str) -> None:
    async for (http,) in clients(fake_lm, rate_limit="1/minute", api_keys=["a:key-a", "b:key-b"]):
        a1 = await http.post("/qa/invoke", json=ASK, headers={"X-API-Key": "key-a"})
        b1 = await http.post("/qa/invoke", json=ASK, headers={"X-API-Key": "key-b"})
        a2 = await http.post("/qa/invoke", json=ASK, headers={"X-API-Key": "key-a"})
    assert (a1.status_code, b1.status_code, a2.status_code) == (200, 200, 429)


async def test_a_batch_counts_each_item(fake_lm: FakeLM, provider_key: str) -> None:
    async for (http,) in clients(fake_lm, rate_limit="3/minute"):
        refused = await http.post("/qa/batch", json={"items": [{"question": "q"}] * 4})
        allowed = await http.post("/qa/batch", json={"items": [{"question": "q"}] * 3})
    assert refused.status_code == 429
    assert allowed.status_code == 200


async def test_spent_lm_tokens_exhaust_the_token_budget(fake_lm: FakeLM, provider_key: str) -> None:
    async for (http,) in clients(fake_lm, token_rate_limit="50/minute"):
        first = await http.post("/qa/invoke", json=ASK)
        second = await http.post("/qa/invoke", json=ASK)
    spent = first.json()["usage"]["openai/fake-model"]["total_tokens"]
    assert first.status_code == 200 and spent > 50
    assert second.status_code == 429
    assert "token" in second.json()["detail"]


async def test_the_window_resets(fake_lm: FakeLM, provider_key: str) -> None:
    async for (http,) in clients(fake_lm, rate_limit="1/second"):
        assert (await http.post("/qa/invoke", json=ASK)).status_code == 200
        assert (await http.post("/qa/invoke", json=ASK)).status_code == 429
        await asyncio.sleep(1.1)
        assert (await http.post("/qa/invoke", json=ASK)).status_code == 200


@pytest.mark.parametrize("window", ["3/minute", "1/second"])
async def test_redis_shares_one_budget_across_workers(
    fake_lm: FakeLM, provider_key: str, redis_url: str, window: str
) -> None:
    storage = f"{redis_url}/0"
    redis.Redis.from_url(storage).flushdb()
    async for workers in clients(fake_lm, count=2, rate_limit=window, rate_limit_storage=storage):
        limit = int(window.split("/")[0])
        statuses = [(await workers[i % 2].post("/qa/invoke", json=ASK)).status_code for i in range(limit + 1)]
        assert statuses == [200] * limit + [429], "the second worker sees the first worker's requests"
        if window == "1/second":
            await asyncio.sleep(1.1)
            assert (await workers[1].post("/qa/invoke", json=ASK)).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/qa/invoke", ASK),
        ("/qa/stream", ASK),
        ("/qa/batch", {"items": [ASK["inputs"]]}),
        ("/v1/chat/completions", {"model": "qa", "messages": [{"role": "user", "content": "Capital?"}]}),
        (
            "/v1/chat/completions",
            {"model": "qa", "messages": [{"role": "user", "content": "Capital?"}], "stream": True},
        ),
    ],
)
async def test_every_endpoint_sends_the_ratelimit_headers(
    fake_lm: FakeLM, provider_key: str, path: str, body: dict[str, Any]
) -> None:
    async for (http,) in clients(fake_lm, rate_limit="5/minute"):
        response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert (response.headers["ratelimit-limit"], response.headers["ratelimit-remaining"]) == ("5", "4")
    assert 0 <= int(response.headers["ratelimit-reset"]) <= 60
