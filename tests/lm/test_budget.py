"""The token budget is enforced per LM call, at the LM client (``lm/budget.py``): a program
that makes many LM calls, run many times at once, cannot spend a multiple of its caller's
budget. Over real HTTP, through DSPy's real LM path, against the fake LM server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dspy
import httpx
import pytest
import redis

from dspy_serve import create_app
from dspy_serve.lm.budget import estimate_tokens, tokens_of
from tests.support.endpoints import read_events
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

TWO_ASYNC = f"two={PROGRAMS / 'serving.py'}:TwoStepAsync"
TWO_SYNC = f"two={PROGRAMS / 'serving.py'}:TwoStepSync"
ONE_TOKEN = {"max_tokens": 1}


@contextmanager
def servers(fake: FakeLM, count: int = 1, program: str = TWO_ASYNC, **settings: Any) -> Iterator[list[str]]:
    """``count`` real servers with the same settings (workers sharing one storage); their URLs."""
    with ExitStack() as stack:
        urls = []
        for _ in range(count):
            app = create_app(fake_settings(fake, programs=[program], **settings))
            server: ServerThread = stack.enter_context(serving(app))
            urls.append(server.base_url)
        yield urls


def spent(body: dict[str, Any]) -> int:
    """The tokens a response (an answer, a problem or a batch) reports as spent."""
    return tokens_of(body.get("usage") or {})


async def concurrently(urls: list[str], path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        posts = (http.post(f"{urls[i % len(urls)]}{path}", json=body) for i, body in enumerate(bodies))
        return list(await asyncio.gather(*posts))


def one_lm_call(fake: FakeLM, program: str = TWO_ASYNC) -> int:
    """The most tokens one LM call of the two-step program spends, measured without a budget."""
    with servers(fake, program=program) as (url,):
        response = httpx.post(f"{url}/two/invoke", json={"inputs": {"question": "q"}, "options": ONE_TOKEN})
    assert response.status_code == 200, response.text
    fake.reset()
    return spent(response.json())  # both calls: a bound on either


@pytest.mark.parametrize("program", [TWO_ASYNC, TWO_SYNC], ids=["aforward", "sync-forward"])
def test_an_lm_call_past_the_budget_is_refused_and_reports_what_was_spent(
    fake_lm: FakeLM, provider_key: str, program: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The first step fits in a 200-token budget, the second does not: it is never sent, and the
    429 reports the first step's tokens (a request-level reservation of max_tokens, 1, let both run)."""
    with servers(fake_lm, program=program, token_rate_limit="200/hour") as (url,):
        body = {"inputs": {"question": "q"}, "options": ONE_TOKEN}
        refused = httpx.post(f"{url}/two/invoke", json=body, timeout=30)
        with httpx.stream("POST", f"{url}/two/stream", json=body, timeout=30) as response:
            streamed = read_events(response)
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "rate_limited" and "token" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert 0 < spent(problem) <= 200, "the first step's tokens, reported"
    assert fake_lm.requests_started == 1, "the second step was refused before it was sent"
    # The budget is spent now: the stream is refused before its first LM call, at once after its
    # first status event (which the refusal must not race into a lost error).
    assert streamed[-1][0] == "error" and streamed[-1][1]["code"] == "rate_limited"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("program", [TWO_ASYNC, TWO_SYNC], ids=["aforward", "sync-forward"])
def test_concurrent_multi_call_programs_cannot_overspend_the_budget(
    fake_lm: FakeLM, provider_key: str, program: str
) -> None:
    """Issue #22's case: 20 concurrent two-step calls with max_tokens 1 each spent the whole
    program (12x the budget). Each LM call now reserves its estimate before it is sent."""
    largest = one_lm_call(fake_lm, program)
    fake_lm.latency = 0.2
    budget = 1000
    body = {"inputs": {"question": "q"}, "options": ONE_TOKEN}
    with servers(fake_lm, program=program, token_rate_limit=f"{budget}/hour") as urls:
        responses = asyncio.run(concurrently(urls, "/two/invoke", [body] * 20))
    statuses = {response.status_code for response in responses}
    assert statuses <= {200, 429} and 429 in statuses, [r.text for r in responses]
    total = sum(spent(response.json()) for response in responses)
    assert total <= budget + largest, f"{total} tokens spent of a {budget}-token budget"
    for response in responses:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited" and "retry-after" in response.headers


def test_a_batch_cannot_overspend_the_budget(fake_lm: FakeLM, provider_key: str) -> None:
    largest = one_lm_call(fake_lm)
    fake_lm.latency = 0.2
    budget = 1000
    body = {"items": [{"question": f"q{i}"} for i in range(20)], "options": ONE_TOKEN}
    with servers(fake_lm, token_rate_limit=f"{budget}/hour") as (url,):
        response = httpx.post(f"{url}/two/batch", json=body, timeout=60)
    assert response.status_code == 200, response.text
    batch = response.json()
    assert spent(batch) == sum(spent(item) for item in batch["items"])
    assert spent(batch) <= budget + largest, f"{spent(batch)} tokens spent of a {budget}-token budget"
    errors = [item["error"] for item in batch["items"] if item.get("error")]
    assert errors and {error["code"] for error in errors} == {"rate_limited"}


def test_workers_sharing_a_redis_budget_cannot_overspend_it(
    fake_lm: FakeLM, provider_key: str, redis_url: str
) -> None:
    largest = one_lm_call(fake_lm)
    fake_lm.latency = 0.2
    storage = f"{redis_url}/0"
    redis.Redis.from_url(storage).flushdb()
    budget = 1000
    body = {"inputs": {"question": "q"}, "options": ONE_TOKEN}
    with servers(fake_lm, count=2, token_rate_limit=f"{budget}/hour", rate_limit_storage=storage) as urls:
        responses = asyncio.run(concurrently(urls, "/two/invoke", [body] * 20))
    total = sum(spent(response.json()) for response in responses)
    assert {response.status_code for response in responses} <= {200, 429}
    assert total <= budget + largest, f"{total} tokens spent of a shared {budget}-token budget"


# --- the estimate an LM call reserves ---------------------------------------------------------------


def test_the_estimate_is_the_prompt_plus_max_tokens_per_candidate() -> None:
    lm = dspy.LM("openai/fake-model", max_tokens=50)
    messages = [{"role": "system", "content": "x" * 300}, {"role": "user", "content": "é" * 30}]
    # 300 bytes and 60 bytes, 3 bytes a token, 4 for each message's framing; 50 per candidate.
    assert estimate_tokens(lm, (), {"messages": messages}, 4096) == 100 + 4 + 20 + 4 + 50
    assert estimate_tokens(lm, (), {"messages": messages, "max_tokens": 10, "n": 3}, 4096) == 128 + 30


def test_the_estimate_uses_the_servers_limit_without_max_tokens_and_counts_media_parts() -> None:
    lm = dspy.LM("openai/fake-model")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    content = [{"type": "text", "text": "abc"}, image]
    estimate = estimate_tokens(lm, (), {"messages": [{"role": "user", "content": content}]}, 4096)
    assert estimate == 1 + 1000 + 4096, "an image is a fixed estimate, never its encoded size"
    assert estimate_tokens(lm, ("a prompt",), {}, 7) == 3 + 7
