"""Integration tier: a real uvicorn server on loopback, a real HTTP client, and DSPy's real
``dspy.LM`` talking over HTTP to the fake OpenAI-compatible LM server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import dspy
import httpx
import pytest

from dspy_serve import ServeSettings, create_app
from dspy_serve.deploy.uvicorn_server import uvicorn_options
from tests.support.fake_lm import FakeLM, Hang, Malformed, RateLimit, ServerError
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

SERVING = PROGRAMS / "serving.py"


def target(name: str) -> str:
    return f"{SERVING}:{name}"


ASK_QA = {"inputs": {"question": "Capital of France?"}}


def post(server_url: str, path: str, body: dict, **kwargs: object) -> httpx.Response:
    return httpx.post(server_url + path, json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_invoke_through_the_real_lm_path(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    with serving(app) as server:
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"] == {"answer": "Paris"}
    assert body["model"] == "openai/fake-model"
    usage = body["usage"]["openai/fake-model"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert response.headers["x-request-id"]
    sent = fake_lm.requests[-1]
    assert "Capital of France?" in json.dumps(sent["messages"])


def test_every_output_type_round_trips(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {
        "label": "neg",
        "score": 0.25,
        "count": 7,
        "flag": False,
        "person": {"name": "Ada", "age": 36},
    }
    app = create_app(fake_settings(fake_lm, programs=[target("kitchen")]))
    with serving(app) as server:
        response = post(server.base_url, "/kitchen/invoke", {"inputs": {"text": "t", "tags": ["a", "b"]}})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == {
        "label": "neg",
        "score": 0.25,
        "count": 7,
        "flag": False,
        "person": {"name": "Ada", "age": 36},
    }


def test_batch_runs_items_concurrently_and_keeps_errors_per_item(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 1.0  # long enough for every item to be in flight together, even on a busy machine
    fake_lm.when("poison", ServerError(500))
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], batch_concurrency=16))
    items = [{"question": f"q{i}"} for i in range(12)] + [{"question": "poison"}, {"nope": 1}]
    with serving(app) as server:
        response = post(server.base_url, "/qa/batch", {"items": items})
    assert response.status_code == 200, response.text
    results = response.json()["items"]
    assert [r["index"] for r in results] == list(range(14))
    assert all(r["outputs"]["answer"] and r["error"] is None for r in results[:12])
    assert results[12]["error"]["status"] == 502
    assert results[13]["error"]["status"] == 422
    assert results[13]["error"]["errors"][0]["loc"][:2] == ["items", 13]
    # The 13 LM calls (12 + the poisoned one) were open at the same time, not one after another.
    assert fake_lm.peak_in_flight == 13, fake_lm.peak_in_flight


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (RateLimit(retry_after=7), 429, "upstream_rate_limited"),
        (ServerError(500), 502, "upstream_error"),
        (Malformed(), 502, "upstream_error"),
    ],
)
def test_lm_failures_map_to_typed_problems(
    fake_lm: FakeLM, provider_key: str, behaviour: object, status: int, code: str
) -> None:
    fake_lm.when("Capital", behaviour)  # type: ignore[arg-type]
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    with serving(app) as server:
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code and problem["status"] == status
    assert problem["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and provider_key not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"


def test_rate_limit_retry_never_sleeps_past_the_deadline(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.when("Capital", RateLimit(retry_after=7))
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], lm_retries=3, timeout=3))
    with serving(app) as server:
        started = time.monotonic()
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
        elapsed = time.monotonic() - started
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert elapsed < 2, "a 7 s retry-after does not fit a 3 s deadline: answer at once"
    assert fake_lm.requests_started == 1


def test_transient_failure_is_retried_within_the_deadline(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.when("Capital", ServerError(500), times=1)
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], lm_retries=2))
    with serving(app) as server:
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == {"answer": "Paris"}
    assert fake_lm.requests_started == 2


def test_a_hung_lm_times_out_with_504_and_is_abandoned(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.when("Capital", Hang())
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], timeout=1))
    with serving(app) as server:
        started = time.monotonic()
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["code"] == "timeout"
    assert 0.9 < elapsed < 3
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)


def test_overload_answers_503_with_retry_after(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 1.0
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], max_in_flight=2, max_queue=1))
    with serving(app) as server:
        items = [{"question": f"q{i}"} for i in range(5)]
        response = post(server.base_url, "/qa/batch", {"items": items})
    statuses = [(item["error"] or {}).get("status", 200) for item in response.json()["items"]]
    assert statuses.count(200) == 3, statuses  # two running, one queued
    assert statuses.count(503) == 2, statuses


def test_model_outside_the_allow_list_is_never_forwarded(fake_lm: FakeLM, provider_key: str) -> None:
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], allow_models=["openai/fake-small"]))
    with serving(app) as server:
        refused = post(
            server.base_url,
            "/qa/invoke",
            {"inputs": {"question": "q"}, "options": {"model": "openai/gpt-4o"}},
        )
        allowed = post(
            server.base_url,
            "/qa/invoke",
            {"inputs": {"question": "q"}, "options": {"model": "openai/fake-small", "temperature": 0.5}},
        )
    assert refused.status_code == 403 and refused.json()["code"] == "model_not_allowed"
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["model"] == "openai/fake-small"
    assert [body["model"] for body in fake_lm.requests] == ["fake-small"]
    assert fake_lm.requests[0]["temperature"] == 0.5


def test_options_out_of_range_are_rejected(fake_lm: FakeLM, provider_key: str) -> None:
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], max_tokens_limit=100))
    with serving(app) as server:
        response = post(
            server.base_url,
            "/qa/invoke",
            {"inputs": {"question": "q"}, "options": {"temperature": 3, "max_tokens": 1000}},
        )
    assert response.status_code == 422
    locs = {tuple(error["loc"]) for error in response.json()["errors"]}
    assert locs == {("body", "options", "temperature"), ("body", "options", "max_tokens")}
    assert fake_lm.requests_started == 0


@pytest.mark.parametrize("program", ["TwoStepSync", "TwoStepAsync"])
def test_sync_and_async_programs_both_serve_concurrently(
    fake_lm: FakeLM, provider_key: str, program: str
) -> None:
    fake_lm.latency = 0.5
    fake_lm.answers = {"query": "q", "answer": "done"}
    app = create_app(fake_settings(fake_lm, programs=[f"two={target(program)}"]))
    with serving(app) as server:
        info = httpx.get(server.base_url + "/programs/two").json()
        response = post(server.base_url, "/two/batch", {"items": [{"question": str(i)} for i in range(8)]})
    assert info["execution"] == ("async" if program == "TwoStepAsync" else "thread")
    assert all(item["outputs"] == {"answer": "done"} for item in response.json()["items"])
    assert fake_lm.requests_started == 16
    # Two sequential steps per item, the 8 items in parallel: 8 LM calls open at once, never 16.
    assert fake_lm.peak_in_flight == 8, fake_lm.peak_in_flight


def test_two_programs_in_one_server(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {
        "answer": "A",
        "label": "pos",
        "score": 1.0,
        "count": 1,
        "flag": True,
        "person": {"name": "x", "age": 1},
    }
    app = create_app(fake_settings(fake_lm, programs=[target("qa"), target("kitchen")]))
    with serving(app) as server:
        names = [p["name"] for p in httpx.get(server.base_url + "/programs").json()]
        first = post(server.base_url, "/qa/invoke", {"inputs": {"question": "q"}})
        second = post(server.base_url, "/kitchen/invoke", {"inputs": {"text": "t", "tags": []}})
        paths = set(httpx.get(server.base_url + "/openapi.json").json()["paths"])
    assert names == ["qa", "kitchen"]
    assert first.status_code == second.status_code == 200
    assert {"/qa/invoke", "/qa/batch", "/kitchen/invoke", "/kitchen/batch"} <= paths


def test_artifact_demos_reach_the_lm(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> None:
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="Capital of Japan?", answer="Tokyo-DEMO").with_inputs("question")]
    artifact = tmp_path / "qa.json"
    program.save(str(artifact))
    app = create_app(fake_settings(fake_lm, programs=["qa=" + target("qa")], artifacts=[str(artifact)]))
    with serving(app) as server:
        ready = httpx.get(server.base_url + "/health/ready").json()
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
    assert response.status_code == 200
    assert ready["programs"]["qa"]["optimized"] is True
    assert "Tokyo-DEMO" in json.dumps(fake_lm.requests[-1]["messages"])


def test_no_secret_in_logs_or_responses(
    fake_lm: FakeLM, provider_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake_lm.when("Capital", ServerError(401))
    caplog.set_level(logging.DEBUG)
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    with serving(app) as server:
        texts = [
            post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital?"}}).text,
            httpx.get(server.base_url + "/programs").text,
            httpx.get(server.base_url + "/health/ready").text,
            httpx.get(server.base_url + "/openapi.json").text,
        ]
    assert fake_lm.requests_started == 1
    for text in [*texts, caplog.text]:
        assert provider_key not in text
    assert json.loads(texts[0])["status"] == 503


def test_lm_connection_pool_is_not_capped_at_dspys_default(fake_lm: FakeLM, provider_key: str) -> None:
    """DSPy's native engine keeps 100 connections per LM; the server sizes the pool itself."""
    fake_lm.latency = 1.5
    items = [{"question": f"q{i}"} for i in range(140)]
    app = create_app(
        fake_settings(fake_lm, programs=[target("qa")], batch_max_items=140, batch_concurrency=140)
    )
    with serving(app) as server:
        response = post(server.base_url, "/qa/batch", {"items": items})
    assert response.status_code == 200
    assert all(item["error"] is None for item in response.json()["items"])
    assert fake_lm.peak_in_flight > 100, fake_lm.peak_in_flight


@pytest.mark.parametrize("retries", [0, 2])
def test_an_absurd_provider_retry_after_is_clamped(fake_lm: FakeLM, provider_key: str, retries: int) -> None:
    fake_lm.when("Capital", RateLimit(retry_after=9e307))  # the header has 308 digits' worth
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], lm_retries=retries, timeout=3))
    with serving(app) as server:
        response = post(server.base_url, "/qa/invoke", {"inputs": {"question": "Capital of France?"}})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "3600"
    assert response.json()["retry_after"] == 3600
    assert fake_lm.requests_started == 1


@pytest.mark.parametrize("proxies", [[], ["127.0.0.1"]])
def test_forwarded_headers_count_only_from_configured_proxies(
    fake_lm: FakeLM, provider_key: str, proxies: list[str]
) -> None:
    """From loopback, X-Forwarded-For picks no rate-limit identity unless loopback is a configured proxy."""
    settings = fake_settings(
        fake_lm, programs=[target("qa")], rate_limit="1/minute", forwarded_allow_ips=proxies
    )
    options = uvicorn_options(settings)
    proxy_options = {key: options[key] for key in ("proxy_headers", "forwarded_allow_ips")}
    with serving(create_app(settings), **proxy_options) as server:
        statuses = [
            post(
                server.base_url, "/qa/invoke", ASK_QA, headers={"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in (1, 2)
        ]
    assert statuses == ([200, 200] if proxies else [200, 429])


def test_forwarded_allow_ips_must_be_addresses_or_networks() -> None:
    assert ServeSettings(forwarded_allow_ips=["10.0.0.0/8", "::1", "*"]).forwarded_allow_ips
    with pytest.raises(ValueError, match="not an IP address"):
        ServeSettings(forwarded_allow_ips=["proxy.internal"])


def test_neither_training_demos_nor_server_paths_are_disclosed(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    program = dspy.Predict("question -> answer")
    program.demos = [
        dspy.Example(question="Secret-TRAINING-question?", answer="Tokyo").with_inputs("question")
    ]
    artifact = tmp_path / "qa.json"
    program.save(str(artifact))
    app = create_app(fake_settings(fake_lm, programs=["qa=" + target("qa")], artifacts=[str(artifact)]))
    with serving(app) as server:
        document = httpx.get(server.base_url + "/openapi.json").text
        programs = httpx.get(server.base_url + "/programs").json()
        one = httpx.get(server.base_url + "/programs/qa").json()
    assert "Secret-TRAINING-question" not in document
    for described in (programs[0], one):
        assert described["artifact"]["name"] == "qa.json" and len(described["artifact"]["sha256"]) == 64
        assert "target" not in described
        assert str(tmp_path) not in json.dumps(described) and str(PROGRAMS) not in json.dumps(described)


def test_options_are_not_coerced(fake_lm: FakeLM, provider_key: str) -> None:
    """`"temperature": false` is a mistake, not 0; nor is a number written as a string."""
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    chat = {"model": "qa", "messages": [{"role": "user", "content": "q"}]}
    with serving(app) as server:
        wrong = [
            {"temperature": False},
            {"temperature": "0.5"},
            {"max_tokens": True},
            {"max_tokens": "100"},
            {"max_tokens": 10.5},  # 10.0 is an integer, as JSON Schema says
            {"model": 1},
        ]
        for options in wrong:
            response = post(server.base_url, "/qa/invoke", {**ASK_QA, "options": options})
            assert response.status_code == 422, (options, response.text)
            assert response.json()["errors"][0]["loc"] == ["body", "options", next(iter(options))]
        for params in ({"temperature": False}, {"max_tokens": "100"}, {"stream": "yes"}, {"n": True}):
            response = post(server.base_url, "/v1/chat/completions", {**chat, **params})
            assert response.status_code == 422, (params, response.text)
        accepted = post(
            server.base_url, "/qa/invoke", {**ASK_QA, "options": {"temperature": 1, "max_tokens": 50}}
        )
    assert accepted.status_code == 200, accepted.text
    assert fake_lm.requests_started == 1
