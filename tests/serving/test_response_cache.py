"""The whole-program response cache: a real uvicorn server, httpx and the fake LM (and a real
Redis for the shared store)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import httpx2
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from dspy_serve import ServeSettings, create_app
from dspy_serve.interop.mcp import CALL_META
from dspy_serve.serving.caller import CacheControl
from tests.support.fake_lm import FakeLM
from tests.support.metrics import samples
from tests.support.redis_server import RedisServer, redis_server
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
OTHER_QA = f"other={PROGRAMS / 'serving.py'}:qa"
ASK = {"inputs": {"question": "Capital of France?"}}


def cached_settings(fake: FakeLM, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {"programs": [QA], "temperature": 0.0, "response_cache": "memory"}
    return fake_settings(fake, **{**values, **overrides})


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    with serving(create_app(cached_settings(fake_lm))) as running:
        yield running


def post(server: ServerThread, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=30, **kwargs)


def cache_counts(server: ServerThread) -> tuple[float, float]:
    found = samples(httpx.get(server.base_url + "/metrics").text)
    return (
        found.get(("dspy_serve_response_cache_total", (("result", "hit"),)), 0.0),
        found.get(("dspy_serve_response_cache_total", (("result", "miss"),)), 0.0),
    )


def test_a_repeated_deterministic_call_is_answered_from_the_cache(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    first = post(server, "/qa/invoke", ASK)
    second = post(server, "/qa/invoke", ASK)
    assert first.status_code == second.status_code == 200, second.text
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json()["outputs"] == first.json()["outputs"]
    assert second.json()["model"] == first.json()["model"] == "openai/fake-model"
    assert first.json()["usage"] and second.json()["usage"] == {}  # a hit spends no tokens
    assert second.json()["cost"]["total_usd"] == 0
    assert fake_lm.requests_started == 1
    assert cache_counts(server) == (1.0, 1.0)
    lm_calls = samples(httpx.get(server.base_url + "/metrics").text)
    assert lm_calls[("dspy_serve_lm_calls_total", (("model", "openai/fake-model"),))] == 1


@pytest.mark.parametrize(
    ("path", "changed"),
    [
        ("/other/invoke", ASK),  # another program
        ("/qa/invoke", {"inputs": {"question": "Capital of Spain?"}}),  # other inputs
        ("/qa/invoke", {**ASK, "options": {"max_tokens": 77}}),  # other options
        ("/qa/invoke", {**ASK, "options": {"model": "openai/fake-small"}}),  # another model
    ],
)
def test_every_part_of_the_key_changes_it(
    fake_lm: FakeLM, provider_key: str, path: str, changed: dict[str, Any]
) -> None:
    settings = cached_settings(fake_lm, programs=[QA, OTHER_QA], allow_models=["openai/fake-small"])
    with serving(create_app(settings)) as server:
        post(server, "/qa/invoke", ASK)
        different = post(server, path, changed)
        again = post(server, path, changed)
    assert different.status_code == 200, different.text
    assert (different.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert fake_lm.requests_started == 2


def test_the_key_includes_the_temperature_when_any_temperature_is_reused(
    fake_lm: FakeLM, provider_key: str
) -> None:
    settings = cached_settings(fake_lm, temperature=None, response_cache_any_temperature=True)
    with serving(create_app(settings)) as server:
        warm = post(server, "/qa/invoke", {**ASK, "options": {"temperature": 0.7}})
        hot = post(server, "/qa/invoke", {**ASK, "options": {"temperature": 0.9}})
        again = post(server, "/qa/invoke", {**ASK, "options": {"temperature": 0.9}})
    assert [r.headers["x-cache"] for r in (warm, hot, again)] == ["miss", "miss", "hit"]
    assert fake_lm.requests_started == 2


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        ({"temperature": None}, {}),  # the provider's default temperature: not deterministic
        ({"temperature": 0.0}, {"temperature": 0.5}),  # the request's temperature wins
        ({"temperature": 0.5}, {}),  # the server's default
    ],
)
def test_only_temperature_zero_is_cached_by_default(
    fake_lm: FakeLM, provider_key: str, settings: dict[str, Any], options: dict[str, Any]
) -> None:
    with serving(create_app(cached_settings(fake_lm, **settings))) as server:
        answers = [post(server, "/qa/invoke", {**ASK, "options": options}) for _ in range(2)]
        counts = cache_counts(server)
    assert [a.status_code for a in answers] == [200, 200]
    assert all("x-cache" not in a.headers for a in answers)
    assert fake_lm.requests_started == 2
    assert counts == (0.0, 0.0)


def test_a_program_whose_own_lm_samples_is_never_reused(fake_lm: FakeLM, provider_key: str) -> None:
    sampling = f"qa={PROGRAMS / 'serving.py'}:sampling_qa"
    settings = cached_settings(fake_lm, programs=[sampling], allow_models=["openai/fake-small"])
    with serving(create_app(settings)) as server:
        answers = [post(server, "/qa/invoke", ASK) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert all("x-cache" not in a.headers for a in answers)
    assert [request["temperature"] for request in fake_lm.requests] == [0.7, 0.7]


def test_a_request_temperature_of_zero_is_cached_whatever_the_server_default(
    fake_lm: FakeLM, provider_key: str
) -> None:
    with serving(create_app(cached_settings(fake_lm, temperature=None))) as server:
        answers = [post(server, "/qa/invoke", {**ASK, "options": {"temperature": 0}}) for _ in range(2)]
    assert [a.headers["x-cache"] for a in answers] == ["miss", "hit"]
    assert fake_lm.requests_started == 1


def test_no_cache_runs_the_program_and_no_store_keeps_its_answer_out(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    unstored = post(server, "/qa/invoke", ASK, headers={"Cache-Control": "no-store"})
    first = post(server, "/qa/invoke", ASK)
    bypassed = post(server, "/qa/invoke", ASK, headers={"Cache-Control": "no-cache"})
    hit = post(server, "/qa/invoke", ASK)
    assert [r.headers["x-cache"] for r in (unstored, first, bypassed, hit)] == ["miss", "miss", "miss", "hit"]
    assert fake_lm.requests_started == 3
    assert bypassed.json()["usage"] and hit.json()["usage"] == {}


def test_every_front_end_uses_the_cache(server: ServerThread, fake_lm: FakeLM) -> None:
    chat = {"model": "qa", "messages": [{"role": "user", "content": "Capital of France?"}]}
    invoked = post(server, "/qa/invoke", ASK)
    batch = post(server, "/qa/batch", {"items": [ASK["inputs"], ASK["inputs"]]})
    completion = post(server, "/v1/chat/completions", chat)
    streamed = post(server, "/qa/stream", ASK)
    chunks = post(server, "/v1/chat/completions", {**chat, "stream": True})
    answer = invoked.json()["outputs"]["answer"]
    assert invoked.headers["x-cache"] == "miss"
    for response in (batch, completion, streamed, chunks):
        assert response.status_code == 200, response.text
        assert response.headers["x-cache"] == "hit"
    assert [item["outputs"] for item in batch.json()["items"]] == [{"answer": answer}] * 2
    assert completion.json()["choices"][0]["message"]["content"] == answer
    events = [block for block in streamed.text.split("\n\n") if block]
    assert len(events) == 1 and events[0].startswith("event: prediction")
    assert json.loads(events[0].partition("data: ")[2])["outputs"] == {"answer": answer}
    assert answer in chunks.text and chunks.text.rstrip().endswith("data: [DONE]")
    assert fake_lm.requests_started == 1


async def test_mcp_tool_calls_use_the_cache(server: ServerThread, fake_lm: FakeLM) -> None:
    http = httpx2.AsyncClient(timeout=30)
    async with Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http)) as client:
        first = await client.call_tool("qa", ASK["inputs"])
        second = await client.call_tool("qa", ASK["inputs"])
    assert not first.is_error and second.structured_content == first.structured_content
    assert first.meta is not None and first.meta[CALL_META]["usage"]
    assert second.meta is not None and second.meta[CALL_META]["usage"] == {}
    assert fake_lm.requests_started == 1


def test_a_finished_stream_fills_the_cache(server: ServerThread, fake_lm: FakeLM) -> None:
    streamed = post(server, "/qa/stream", ASK)
    invoked = post(server, "/qa/invoke", ASK)
    assert (streamed.headers["x-cache"], invoked.headers["x-cache"]) == ("miss", "hit")
    assert fake_lm.requests_started == 1


def test_a_batch_is_a_hit_only_when_every_item_is(server: ServerThread, fake_lm: FakeLM) -> None:
    post(server, "/qa/invoke", ASK)
    mixed = post(server, "/qa/batch", {"items": [ASK["inputs"], {"question": "Capital of Peru?"}]})
    assert mixed.headers["x-cache"] == "miss"
    assert [bool(item["usage"]) for item in mixed.json()["items"]] == [False, True]


def test_the_memory_cache_keeps_the_most_recently_used_answers(fake_lm: FakeLM, provider_key: str) -> None:
    def ask(server: ServerThread, question: str) -> str:
        return post(server, "/qa/invoke", {"inputs": {"question": question}}).headers["x-cache"]

    with serving(create_app(cached_settings(fake_lm, response_cache_entries=2))) as server:
        seen = [ask(server, q) for q in ("A?", "B?", "A?", "C?", "A?", "B?")]
    # C evicts B, the least recently used: A, used since B, stays; and B is gone.
    assert seen == ["miss", "miss", "hit", "miss", "hit", "miss"]


def test_an_answer_expires_after_the_ttl(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(create_app(cached_settings(fake_lm, response_cache_ttl=0.5))) as server:
        first = post(server, "/qa/invoke", ASK)
        time.sleep(1.0)
        later = post(server, "/qa/invoke", ASK)
    assert (first.headers["x-cache"], later.headers["x-cache"]) == ("miss", "miss")
    assert fake_lm.requests_started == 2


@pytest.mark.parametrize(
    ("header", "read", "store"),
    [
        ("", True, True),
        ("no-cache", False, True),
        ("No-Store", True, False),
        ("max-age=0, no-cache, no-store", False, False),
        ('no-cache="Set-Cookie"', False, True),
    ],
)
def test_cache_control_directives(header: str, read: bool, store: bool) -> None:
    assert CacheControl.parse(header) == CacheControl(read=read, store=store)


def test_a_hit_charges_no_tokens(fake_lm: FakeLM, provider_key: str) -> None:
    # One call spends about 160 tokens and holds about 250 while it runs (its prompt, estimated
    # high, and max_tokens): a budget of 450 has room for two calls, not three.
    options = {"max_tokens": 50}
    with serving(create_app(cached_settings(fake_lm, token_rate_limit="450/minute"))) as server:
        first = post(server, "/qa/invoke", {**ASK, "options": options})
        hits = [post(server, "/qa/invoke", {**ASK, "options": options}) for _ in range(5)]
        other = post(server, "/qa/invoke", {"inputs": {"question": "Capital of Peru?"}, "options": options})
        spent = post(server, "/qa/invoke", {"inputs": {"question": "Capital of Chile?"}, "options": options})
    assert 150 < sum(u["total_tokens"] for u in first.json()["usage"].values()) < 225
    assert [h.status_code for h in hits] == [200] * 5
    assert other.status_code == 200, "the hits took nothing from the budget"
    assert spent.status_code == 429, spent.text


def test_a_new_artifact_is_a_new_version(
    fake_lm: FakeLM, provider_key: str, redis_url: str, tmp_path: Path
) -> None:
    store = f"{redis_url}/2"
    redis.Redis.from_url(store).flushdb()
    program = dspy.Predict("question -> answer")
    artifacts = []
    for name in ("one", "two"):
        program.demos = [dspy.Example(question="q?", answer=name).with_inputs("question")]
        program.save(str(tmp_path / f"{name}.json"))
        artifacts.append(str(tmp_path / f"{name}.json"))
    headers = []
    for artifact in (artifacts[0], artifacts[1], artifacts[0]):
        settings = cached_settings(fake_lm, artifacts=[artifact], response_cache=store)
        with serving(create_app(settings)) as server:
            headers.append(post(server, "/qa/invoke", ASK).headers["x-cache"])
    assert headers == ["miss", "miss", "hit"]
    assert fake_lm.requests_started == 2


def test_redis_shares_the_cache_between_instances(fake_lm: FakeLM, provider_key: str, redis_url: str) -> None:
    store = f"{redis_url}/2"
    redis.Redis.from_url(store).flushdb()
    settings = cached_settings(fake_lm, response_cache=store)
    with serving(create_app(settings)) as one, serving(create_app(settings)) as two:
        first = post(one, "/qa/invoke", ASK)
        second = post(two, "/qa/invoke", ASK)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json()["outputs"] == first.json()["outputs"]
    assert fake_lm.requests_started == 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def test_a_redis_that_is_down_is_a_miss_never_an_error(
    fake_lm: FakeLM, provider_key: str, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(create_app(cached_settings(fake_lm, response_cache=own_redis.url))) as server:
        assert post(server, "/qa/invoke", ASK).headers["x-cache"] == "miss"
        assert post(server, "/qa/invoke", ASK).headers["x-cache"] == "hit"
        own_redis.process.terminate()
        own_redis.process.wait(timeout=10)
        answers = [post(server, "/qa/invoke", ASK), post(server, "/qa/stream", ASK)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-cache"] for a in answers] == ["miss", "miss"]
    assert fake_lm.requests_started == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "dspy_serve.response_cache"]
    assert len(warnings) == 1 and "unavailable" in warnings[0], warnings
    assert not any(record.exc_info for record in caplog.records)


def test_a_hung_redis_costs_a_call_at_most_its_timeout_then_nothing(
    fake_lm: FakeLM, provider_key: str, own_redis: RedisServer
) -> None:
    settings = cached_settings(fake_lm, response_cache=own_redis.url, response_cache_timeout=1.0)
    with serving(create_app(settings)) as server:
        assert post(server, "/qa/invoke", ASK).headers["x-cache"] == "miss"
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = post(server, "/qa/invoke", ASK)
            waited = time.monotonic() - started
            started = time.monotonic()
            second = post(server, "/qa/invoke", ASK)
            waited_again = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["x-cache"] == second.headers["x-cache"] == "miss"
    # The lookup waited for the timeout (1 s), the store was skipped, and the next call did not
    # wait for Redis at all (the fake LM answers at once): bounds kept generous.
    assert 1.0 <= waited < 6.0
    assert waited_again < waited - 0.5
    assert fake_lm.requests_started == 3


def test_response_cache_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="Redis URL"):
        ServeSettings(response_cache="disk")
