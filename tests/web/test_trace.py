"""A call's trace (`options.trace`): only when the operator exposes traces and the caller asks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.endpoints import read_events
from tests.support.fake_lm import FakeLM
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

SERVING = PROGRAMS / "serving.py"
QUESTION = {"question": "Capital of France?"}


def two_step(fake_lm: FakeLM, name: str = "TwoStepAsync", **settings: Any) -> Any:
    fake_lm.answers = {"query": "france capital", "answer": "Paris"}
    return create_app(fake_settings(fake_lm, programs=[f"{SERVING}:{name}"], **settings))


def invoke(base_url: str, options: dict[str, Any] | None = None, path: str = "invoke") -> httpx.Response:
    body: dict[str, Any] = {"inputs": QUESTION}
    if options is not None:
        body["options"] = options
    return httpx.post(f"{base_url}/{path}", json=body, timeout=30)


def stream(base_url: str, options: dict[str, Any] | None = None) -> tuple[int, list[tuple[str, Any]]]:
    body: dict[str, Any] = {"inputs": QUESTION, **({"options": options} if options else {})}
    with httpx.stream("POST", f"{base_url}/stream", json=body, timeout=20) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [("refused", response.json())]
        return 200, read_events(response)


EXPECTED_STEPS = [
    {"predictor": "rewrite", "inputs": QUESTION, "outputs": {"query": "france capital"}},
    {
        "predictor": "answer",
        "inputs": {"query": "france capital", **QUESTION},
        "outputs": {"answer": "Paris"},
    },
]


@pytest.mark.parametrize("name", ["TwoStepAsync", "TwoStepSync"])
def test_a_traced_call_lists_each_predictor_in_order_with_its_inputs_and_outputs(
    fake_lm: FakeLM, provider_key: str, name: str
) -> None:
    with serving(two_step(fake_lm, name, expose_trace=True)) as server:
        [described] = httpx.get(f"{server.base_url}/programs").json()
        invoked = invoke(f"{server.base_url}/{name}", {"trace": True})
        status, events = stream(f"{server.base_url}/{name}", {"trace": True})
    assert described["trace_available"] is True
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["outputs"] == {"answer": "Paris"}
    assert invoked.json()["trace"] == EXPECTED_STEPS
    assert status == 200
    [prediction] = [data for event, data in events if event == "prediction"]
    assert prediction["trace"] == EXPECTED_STEPS


def test_the_trace_is_absent_unless_asked(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(two_step(fake_lm, expose_trace=True)) as server:
        invoked = invoke(f"{server.base_url}/TwoStepAsync", {"trace": False})
        plain = invoke(f"{server.base_url}/TwoStepAsync")
        status, events = stream(f"{server.base_url}/TwoStepAsync")
    assert invoked.status_code == plain.status_code == status == 200
    assert "trace" not in invoked.json() and "trace" not in plain.json()
    [prediction] = [data for event, data in events if event == "prediction"]
    assert prediction["outputs"] == {"answer": "Paris"} and "trace" not in prediction


def test_asking_for_a_trace_when_traces_are_off_is_a_typed_403(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(two_step(fake_lm)) as server:
        [described] = httpx.get(f"{server.base_url}/programs").json()
        invoked = invoke(f"{server.base_url}/TwoStepAsync", {"trace": True})
        status, [(_, streamed)] = stream(f"{server.base_url}/TwoStepAsync", {"trace": True})
        not_bool = invoke(f"{server.base_url}/TwoStepAsync", {"trace": "yes"})
        batch = httpx.post(
            f"{server.base_url}/TwoStepAsync/batch",
            json={"items": [QUESTION], "options": {"trace": True}},
            timeout=30,
        )
    assert described["trace_available"] is False
    assert invoked.status_code == status == batch.status_code == 403
    for problem in (invoked.json(), streamed, batch.json()):
        assert problem["code"] == "trace_not_exposed"
        assert problem["errors"][0]["loc"] == ["options", "trace"]
        assert "--expose-trace" in problem["detail"]
    assert not_bool.status_code == 422
    assert not_bool.json()["errors"][0]["loc"][-2:] == ["options", "trace"]
    assert fake_lm.requests == [], "a refused call never reaches the LM"


def test_a_batch_cannot_ask_for_a_trace(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(two_step(fake_lm, expose_trace=True)) as server:
        response = httpx.post(
            f"{server.base_url}/TwoStepAsync/batch",
            json={"items": [QUESTION], "options": {"trace": True}},
            timeout=30,
        )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_override"
    assert response.json()["errors"][0]["loc"] == ["options", "trace"]


def test_a_traced_call_is_its_own_run_never_a_cached_answer(fake_lm: FakeLM, provider_key: str) -> None:
    app = two_step(fake_lm, expose_trace=True, response_cache="memory", temperature=0.0)
    with serving(app) as server:
        url = f"{server.base_url}/TwoStepAsync"
        first, again = invoke(url), invoke(url)
        lm_requests = len(fake_lm.requests)
        traced = invoke(url, {"trace": True})
        after_traced = len(fake_lm.requests)
        cached = invoke(url)
    assert first.status_code == again.status_code == traced.status_code == 200
    assert lm_requests == 2, "the second plain call was answered from the cache"
    assert after_traced == 4 and traced.json()["trace"] == EXPECTED_STEPS
    assert len(fake_lm.requests) == 4 and "trace" not in cached.json(), "nor does it fill the cache"
