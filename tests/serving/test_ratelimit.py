"""Rate limits per caller, in memory and in a real Redis shared by two app instances."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM
from tests.support.metrics import requests_counted
from tests.support.redis_server import RedisServer, redis_server
from tests.support.settings import PROGRAMS, fake_settings

ASK = {"inputs": {"question": "Capital of France?"}}
QA = f"qa={PROGRAMS / 'serving.py'}:qa"


async def clients(
    fake: FakeLM, count: int = 1, programs: list[str] | None = None, **settings: Any
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` app instances with the same settings: several workers sharing one storage."""
    async with AsyncExitStack() as stack:
        http = []
        for _ in range(count):
            app = create_app(fake_settings(fake, programs=programs or [QA], **settings))
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


# --- the token budget: reserved before a call, charged whatever its outcome -------------------------


async def test_concurrent_calls_cannot_overspend_the_token_budget(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 0.5
    body = {**ASK, "options": {"max_tokens": 100}}
    async for (http,) in clients(fake_lm, token_rate_limit="300/minute"):
        responses = await asyncio.gather(*(http.post("/qa/invoke", json=body) for _ in range(40)))
    statuses = [response.status_code for response in responses]
    # Each call holds its max_tokens (100) until it settles: room for 3 of them in 300 tokens.
    assert statuses.count(200) == fake_lm.requests_started <= 3, statuses
    assert set(statuses) == {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["code"] == "rate_limited" and "token" in refused.json()["detail"]


async def test_a_batch_cannot_overspend_the_token_budget(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 0.2
    body = {"items": [{"question": f"q{i}"} for i in range(64)], "options": {"max_tokens": 100}}
    async for (http,) in clients(fake_lm, token_rate_limit="300/minute"):
        response = await http.post("/qa/batch", json=body)
    assert response.status_code == 200
    items = response.json()["items"]
    answered = [item for item in items if item.get("error") is None]
    assert len(answered) == fake_lm.requests_started <= 3
    assert {item["error"]["code"] for item in items if item.get("error")} == {"rate_limited"}


async def test_a_call_that_spent_tokens_then_failed_is_charged(fake_lm: FakeLM, provider_key: str) -> None:
    from tests.support.fake_lm import Malformed

    fake_lm.when("France", Malformed())
    async for (http,) in clients(fake_lm, token_rate_limit="50/minute"):
        failed = await http.post("/qa/invoke", json=ASK)
        after = await http.post("/qa/invoke", json={"inputs": {"question": "Capital of Spain?"}})
    # The unparseable answer spent the budget: the adapter's JSON retry, another LM call, is refused.
    assert failed.status_code == 429 and failed.json()["usage"], failed.text
    assert after.status_code == 429, "the LM answered (unparseably): its tokens were spent"
    assert fake_lm.requests_started >= 1 and "Spain" not in str(fake_lm.last_request)


# Both steps of a two-step call fit in 600 tokens (each LM call holds ~200 for its prompt, and 10);
# a call that holds ~550 for its first step fits only if nothing else was spent.
_TWO_STEPS = {"inputs": {"question": "q"}, "options": {"max_tokens": 10}}
_NEEDS_MOST_OF_600 = {"inputs": {"question": "q"}, "options": {"max_tokens": 350}}


async def test_a_call_that_timed_out_after_spending_is_charged(fake_lm: FakeLM, provider_key: str) -> None:
    from tests.support.fake_lm import Hang

    fake_lm.answers = {"query": "SECOND-STEP", "answer": "a"}
    fake_lm.when("SECOND-STEP", Hang())
    two = f"two={PROGRAMS / 'serving.py'}:TwoStepAsync"
    async for (http,) in clients(fake_lm, programs=[two], token_rate_limit="600/minute", timeout=1.0):
        timed_out = await http.post("/two/invoke", json=_TWO_STEPS)
        after = await http.post("/two/invoke", json=_NEEDS_MOST_OF_600)
    assert timed_out.status_code == 504
    assert after.status_code == 429, "the first step's tokens were spent before the deadline"


def test_a_stream_left_by_its_client_is_charged(fake_lm: FakeLM, provider_key: str) -> None:
    import json

    from tests.support.servers import serving

    fake_lm.answers = {"query": "short", "answer": "a fairly long answer that streams slowly to its reader"}
    fake_lm.chunk_delay, fake_lm.chunk_chars = 0.1, 2
    two = f"two={PROGRAMS / 'serving.py'}:TwoStepAsync"
    app = create_app(fake_settings(fake_lm, programs=[two], token_rate_limit="600/minute"))
    with serving(app) as server:
        url = server.base_url + "/two/stream"
        with httpx.stream("POST", url, json=_TWO_STEPS, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("predictor") == "answer":
                    break  # the first step is done and paid for; leave during the second
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)
        # The stream's request has ended (and settled) once it is counted.
        metrics = server.base_url + "/metrics"
        assert fake_lm.wait_for(lambda: requests_counted(httpx.get(metrics).text, "stream") == 1, timeout=5)
        after = httpx.post(server.base_url + "/two/invoke", json=_NEEDS_MOST_OF_600, timeout=30)
    assert after.status_code == 429, after.text


# --- the storage down or hung: a typed 503, readiness says so, and the deadline holds ---------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop or pause."""
    with redis_server(tmp_path) as server:
        yield server


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> bool:
    return not any(record.exc_info or "Traceback" in record.getMessage() for record in caplog.records)


async def test_a_stopped_redis_is_a_503_with_retry_after_and_unready(
    fake_lm: FakeLM, provider_key: str, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"rate_limit": "100/minute", "token_rate_limit": "100000/hour"}
    async for (http,) in clients(fake_lm, rate_limit_storage=own_redis.url, **limits):
        assert (await http.post("/qa/invoke", json=ASK)).status_code == 200
        assert (await http.get("/health/ready")).status_code == 200
        own_redis.process.terminate()
        own_redis.process.wait(timeout=10)
        await asyncio.sleep(1.1)  # past the readiness answer kept from before
        refused = await http.post("/qa/invoke", json=ASK)
        streamed = await http.post("/qa/stream", json=ASK)
        ready = await http.get("/health/ready")
    for response in (refused, streamed, ready):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) >= 1
    assert "storage" in refused.json()["detail"] and "storage" in ready.json()["detail"]
    assert fake_lm.requests_started == 1
    assert no_tracebacks(caplog)


async def test_a_hung_redis_is_a_503_within_the_deadline_and_recovers(
    fake_lm: FakeLM, provider_key: str, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"rate_limit": "100/minute", "token_rate_limit": "100000/hour", "timeout": 3.0}
    async for (http,) in clients(fake_lm, rate_limit_storage=own_redis.url, **settings):
        assert (await http.post("/qa/invoke", json=ASK)).status_code == 200
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.1)  # past the readiness answer kept from before
            started = time.monotonic()
            refused = await http.post("/qa/invoke", json=ASK, timeout=30)
            waited = time.monotonic() - started
            ready = await http.get("/health/ready", timeout=30)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.1)
        recovered = await http.post("/qa/invoke", json=ASK)
        ready_again = await http.get("/health/ready")
    assert refused.status_code == 503 and "retry-after" in refused.headers, refused.text
    assert waited < 3.0, "a hung storage must not hold a call past its deadline"
    assert ready.status_code == 503
    assert recovered.status_code == 200 and ready_again.status_code == 200
    assert no_tracebacks(caplog)
