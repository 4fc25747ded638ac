"""A predictor's own LM (set in its program, or saved in its artifact) obeys the allow-list.

DSPy gives a predictor's ``lm`` precedence over the request's, so without this an artifact could
send calls to any model, past the pool, the retries bounded by the deadline and the metrics.
"""

from __future__ import annotations

import copy
from pathlib import Path

import dspy
import httpx
import pytest

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM
from tests.support.metrics import samples
from tests.support.programs.serving import qa as served_qa
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def _qa_with_own_lm(model: str, **kwargs: object) -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.lm = dspy.LM(model, **kwargs)  # no api_base: only the service can route it to the fake
    return program


def test_a_predictor_lm_outside_the_allow_list_stops_startup(fake_lm: FakeLM) -> None:
    with pytest.raises(ValueError, match=r"predictor 'self' has its own LM 'openai/gpt-4o'.*--allow-model"):
        create_app(fake_settings(fake_lm), programs={"qa": _qa_with_own_lm("openai/gpt-4o")})


def test_an_allowed_predictor_lm_is_served_by_the_service_with_its_own_parameters(
    fake_lm: FakeLM, provider_key: str
) -> None:
    settings = fake_settings(fake_lm, allow_models=["openai/fake-large"])
    closed_port = "http://127.0.0.1:9/v1"  # the service's endpoint must win over the program's
    program = _qa_with_own_lm("openai/fake-large", temperature=0.3, api_base=closed_port)
    with serving(create_app(settings, programs={"qa": program})) as server:
        response = httpx.post(server.base_url + "/qa/invoke", json={"inputs": {"question": "q"}}, timeout=10)
        metrics = samples(httpx.get(server.base_url + "/metrics", timeout=5).text)
    assert response.status_code == 200, response.text
    sent = fake_lm.last_request
    assert sent["model"] == "fake-large" and sent["temperature"] == 0.3, "its model and parameters"
    assert metrics[("dspy_serve_lm_calls_total", (("model", "openai/fake-large"),))] == 1
    assert "openai/fake-large" in response.json()["usage"]


def test_a_predictor_lm_saved_in_an_artifact_is_checked_too(fake_lm: FakeLM, tmp_path: Path) -> None:
    artifact = tmp_path / "qa.json"
    optimized = copy.deepcopy(served_qa)
    optimized.lm = dspy.LM("openai/gpt-4o")  # as an optimizer run with a per-predictor LM saves it
    optimized.save(str(artifact))
    settings = fake_settings(fake_lm, programs=[QA], artifacts=[str(artifact)])
    with pytest.raises(ValueError, match=r"program 'qa': predictor 'self' has its own LM 'openai/gpt-4o'"):
        create_app(settings)


# --- LMs held outside predictors ------------------------------------------------------------------


class HoldsLMs(dspy.Module):
    def __init__(self, shared: dspy.BaseLM) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")
        self.answer.lm = shared
        self.judge = shared  # the same LM in two places
        self.pool = [dspy.LM("openai/pool-a"), {"b": dspy.LM("openai/pool-b")}]

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


def test_every_held_lm_is_found_with_where_it_is() -> None:
    from dspy_serve.lm.held import held_lms

    program = HoldsLMs(dspy.LM("openai/shared"))

    found = {held.where: held.lm.model for held in held_lms(program)}

    assert found == {
        "predictor 'answer'": "openai/shared",
        "attribute 'judge'": "openai/shared",
        "attribute 'pool[0]'": "openai/pool-a",
        "attribute \"pool[1]['b']\"": "openai/pool-b",
    }


def test_held_lms_are_replaced_by_the_services_and_a_shared_one_stays_shared(
    fake_lm: FakeLM, provider_key: str
) -> None:
    from dspy_serve.lm.registry import LanguageModels, adopt_held_lms

    settings = fake_settings(fake_lm, allow_models=["openai/shared", "openai/pool-a", "openai/pool-b"])
    program = HoldsLMs(dspy.LM("openai/shared", cache=True, temperature=0.2))

    adopt_held_lms(program, LanguageModels(settings))

    assert program.answer.lm is program.judge
    assert program.judge.kwargs["temperature"] == 0.2 and program.judge.cache is False
    assert isinstance(program.pool[0], type(program.judge)) and type(program.judge).__name__ == "ServingLM"
    assert program.pool[1]["b"].model == "openai/pool-b"


def test_an_unreachable_lm_is_logged_with_its_host_and_error_but_no_secret(
    provider_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Callers get a 502; the operator gets where the calls went and why, at warning level."""
    import logging
    import socket

    from dspy_serve import ServeSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings = ServeSettings(
        model="openai/fake-model",
        api_base=f"http://operator:hunter2@127.0.0.1:{port}/v1/path-token-s3cret",
        lm_retries=1,
        programs=[QA],
    )
    caplog.set_level(logging.WARNING, logger="dspy_serve")
    with serving(create_app(settings)) as server:
        response = httpx.post(
            server.base_url + "/qa/invoke", json={"inputs": {"question": "PRIVATE-PROMPT"}}, timeout=30
        )
    assert response.status_code == 502
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LM call failed")]
    assert len(failures) == 2, caplog.text  # the attempt and its retry
    assert failures[0].startswith(
        f"LM call failed: openai/fake-model at http://127.0.0.1:{port}: LMTransportError: "
    )
    assert failures[0].endswith("(attempt 1 of 2, retrying in 0.5 s)")
    assert failures[1].endswith("(attempt 2 of 2, giving up)")
    for secret in ("hunter2", "operator", "path-token-s3cret", "PRIVATE-PROMPT", provider_key):
        assert secret not in caplog.text
