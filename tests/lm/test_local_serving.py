"""The embedded model served over HTTP: the README's first command, as a test, on each runtime.

xllamacpp (the default) runs in the ``local_model`` tier, llama-cpp-python (the source-built
fallback) in ``local_model_fallback``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from dspy_serve import ServeSettings, create_app
from dspy_serve.lm.local_runtime import choose_runtime
from tests.support.local_model import MARKS, require, runtime_params
from tests.support.servers import ServerThread, serving
from tests.support.settings import EXAMPLES

QUESTIONS = [
    "What is the capital of France?",
    "What is the largest planet in the solar system?",
    "What color is the sky on a clear day?",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Who painted the Mona Lisa?",
    "What is the chemical symbol for gold?",
    "Which ocean is the largest?",
    "What is the capital of Italy?",
    "What language is spoken in Brazil?",
]
PACKAGES = {"xllamacpp": "xllamacpp", "llama-cpp": "llama-cpp-python"}


def demo_settings(**overrides: object) -> ServeSettings:
    values: dict[str, object] = {
        "programs": [f"qa={EXAMPLES / 'qa.py'}:program"],
        "artifacts": [str(EXAMPLES / "qa.json")],
        "timeout": 60,
    }
    return ServeSettings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=runtime_params("xllamacpp", "llama-cpp"))
def local_server(request: pytest.FixtureRequest) -> Iterator[tuple[ServerThread, str]]:
    require(request.param)
    with serving(create_app(demo_settings(local_runtime=request.param))) as server:
        yield server, request.param


def test_invoke_answers_with_a_schema_valid_output(local_server: tuple[ServerThread, str]) -> None:
    server, _ = local_server
    response = httpx.post(
        server.base_url + "/qa/invoke", json={"inputs": {"question": QUESTIONS[0]}}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["outputs"]["answer"], str)
    assert "paris" in body["outputs"]["answer"].lower()  # the demo's question, answered sensibly
    assert body["model"] == "local/SmolLM2-135M-Instruct"
    usage = body["usage"][body["model"]]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_ten_calls_in_a_row_have_no_parse_failures(local_server: tuple[ServerThread, str]) -> None:
    server, _ = local_server
    statuses = []
    for question in QUESTIONS:
        response = httpx.post(
            server.base_url + "/qa/invoke", json={"inputs": {"question": question}}, timeout=60
        )
        statuses.append(response.status_code)
    assert statuses == [200] * len(QUESTIONS)


def test_programs_and_readiness_say_which_runtime_serves(local_server: tuple[ServerThread, str]) -> None:
    server, runtime = local_server
    info = httpx.get(server.base_url + "/programs/qa", timeout=10).json()
    assert info["model"] == "local/SmolLM2-135M-Instruct"
    assert info["optimized"] is True and len(info["artifact"]["sha256"]) == 64
    assert info["local_runtime"]["name"] == runtime
    assert info["local_runtime"]["package"] == PACKAGES[runtime]
    assert info["local_runtime"]["version"]
    assert info["local_runtime"]["reason"] == "forced by local_runtime"
    ready = httpx.get(server.base_url + "/health/ready", timeout=10).json()
    assert ready["local_runtime"] == info["local_runtime"]


def test_streaming_yields_tokens_before_the_prediction(local_server: tuple[ServerThread, str]) -> None:
    server, _ = local_server
    events = []
    with httpx.stream(
        "POST", server.base_url + "/qa/stream", json={"inputs": {"question": QUESTIONS[1]}}, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    assert "token" in events
    assert events[-1] == "prediction"
    assert events.index("token") < events.index("prediction")


def test_a_client_that_leaves_mid_stream_frees_the_model(local_server: tuple[ServerThread, str]) -> None:
    """Closing the stream cancels the generation; the next caller is served, not left queued."""
    server, _ = local_server
    body = {"inputs": {"question": "Write a long story about the sea."}, "options": {"max_tokens": 400}}
    with httpx.stream("POST", server.base_url + "/qa/stream", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line == "event: token":
                break  # leave after the first token
    response = httpx.post(
        server.base_url + "/qa/invoke", json={"inputs": {"question": QUESTIONS[8]}}, timeout=60
    )
    assert response.status_code == 200, response.text


@MARKS["xllamacpp"]
def test_auto_picks_xllamacpp_here_and_the_startup_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    require("xllamacpp")
    choice = choose_runtime("auto")
    if choice.name != "xllamacpp":
        pytest.skip(f"this machine runs the fallback: {choice.reason}")
    with caplog.at_level(logging.INFO, logger="dspy_serve"), serving(create_app(demo_settings())) as server:
        ready = httpx.get(server.base_url + "/health/ready", timeout=10).json()
    assert ready["local_runtime"]["name"] == "xllamacpp"
    assert ready["local_runtime"]["reason"] == choice.reason
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving qa")]
    assert started and "on xllamacpp 2026.10.11549" in started[0], started
