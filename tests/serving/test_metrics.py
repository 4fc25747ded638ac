"""Usage, cost, Prometheus metrics and the access log, after real traffic on the fake LM."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dspy_serve import create_app
from dspy_serve.logs import JsonFormatter
from dspy_serve.serving.pricing import estimate
from tests.support.fake_lm import FakeLM
from tests.support.metrics import samples
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
PRICED = "openai/gpt-4o-mini"  # a model DSPy's bundled metadata prices; the fake LM answers for it
ASK = {"inputs": {"question": "Capital of France? PROMPT-TEXT"}}


@pytest.fixture
async def http(fake_lm: FakeLM, provider_key: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        fake_settings(fake_lm, programs=[QA], model=PRICED, cache=True, api_keys=["ops:sk-metrics-SECRET"])
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://t",
            headers={"X-API-Key": "sk-metrics-SECRET"},
        ) as client,
    ):
        yield client


async def test_usage_and_cost_are_reported_and_plausible(http: httpx.AsyncClient) -> None:
    body = (await http.post("/qa/invoke", json=ASK)).json()
    usage = body["usage"][PRICED]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, "usage must not be empty"
    cost = body["cost"]
    expected = usage["prompt_tokens"] * 0.15e-6 + usage["completion_tokens"] * 0.6e-6
    assert cost["total_usd"] == pytest.approx(expected)
    assert cost["by_model"][PRICED]["reason"] is None


def test_unknown_prices_are_null_with_a_reason() -> None:
    cost = estimate({"openai/no-such-model": {"prompt_tokens": 10, "completion_tokens": 5}})
    assert cost["total_usd"] is None
    assert "no pricing" in cost["by_model"]["openai/no-such-model"]["reason"]


async def test_metrics_count_requests_tokens_cost_errors_and_cache_hits(http: httpx.AsyncClient) -> None:
    first = (await http.post("/qa/invoke", json=ASK)).json()
    await http.post("/qa/invoke", json=ASK)  # the same request: answered by DSPy's cache
    await http.post("/qa/invoke", json={**ASK, "options": {"model": "openai/other"}})  # 403
    text = (await http.get("/metrics")).text
    values = samples(text)
    usage = first["usage"][PRICED]
    assert (
        values[("dspy_serve_requests_total", (("endpoint", "invoke"), ("program", "qa"), ("status", "200")))]
        == 2
    )
    assert (
        values[("dspy_serve_requests_total", (("endpoint", "invoke"), ("program", "qa"), ("status", "403")))]
        == 1
    )
    assert (
        values[("dspy_serve_lm_tokens_total", (("direction", "in"), ("model", PRICED)))]
        == usage["prompt_tokens"]
    )
    assert values[("dspy_serve_lm_cost_usd_total", (("model", PRICED),))] == pytest.approx(
        first["cost"]["total_usd"]
    )
    assert values[("dspy_serve_lm_calls_total", (("model", PRICED),))] == 2
    assert values[("dspy_serve_lm_cache_hits_total", (("model", PRICED),))] == 1
    assert values[("dspy_serve_errors_total", (("code", "model_not_allowed"),))] == 1
    assert values[("dspy_serve_calls_in_flight", ())] == 0
    assert (
        "dspy_serve_request_duration_seconds_count",
        (("endpoint", "invoke"), ("program", "qa")),
    ) in values


async def test_one_json_access_line_per_request_without_secrets_or_prompts(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dspy_serve.access")
    response = await http.post("/qa/invoke", json=ASK, headers={"X-Request-ID": "req-42"})
    lines = [
        JsonFormatter().format(record) for record in caplog.records if record.name == "dspy_serve.access"
    ]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["request_id"] == "req-42" and entry["program"] == "qa" and entry["status"] == 200
    assert entry["key"] == "ops" and entry["latency_ms"] > 0
    assert entry["tokens"] == response.json()["usage"][PRICED]["total_tokens"]
    assert entry["cost_usd"] == pytest.approx(response.json()["cost"]["total_usd"])
    assert "sk-metrics-SECRET" not in caplog.text and "PROMPT-TEXT" not in caplog.text


WORKER = """
import asyncio, sys, httpx
from dspy.utils import DummyLM
from dspy_serve import ServeSettings, create_app

async def main(requests):
    lm = DummyLM([{"answer": "x"}] * 9)
    app = create_app(ServeSettings(), programs={"qa": "question -> answer"}, lm=lm)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        for _ in range(requests):
            assert (await http.post("/qa/invoke", json={"inputs": {"question": "q"}})).status_code == 200
        print((await http.get("/metrics")).text)

asyncio.run(main(int(sys.argv[1])))
"""


def test_metrics_aggregate_across_worker_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (as several workers run), any worker's /metrics counts all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for requests in (2, 3):  # two workers, one after the other
        subprocess.run(
            [sys.executable, "-c", WORKER, str(requests)],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
    scrape = subprocess.run(
        [sys.executable, "-c", WORKER, "1"], env=env, check=True, timeout=120, capture_output=True, text=True
    ).stdout
    values = samples(scrape)
    key = ("dspy_serve_requests_total", (("endpoint", "invoke"), ("program", "qa"), ("status", "200")))
    assert values[key] == 6  # 2 + 3 from the earlier workers, 1 from this one
