"""CallObservers: every observer hears every call; one that fails is logged, never fatal."""

from __future__ import annotations

import logging

import pytest

from dspy_serve.serving.observers import CallObservers, FinishedCall

CALL = FinishedCall(
    call_id="c1",
    program="qa",
    version=None,
    key_name=None,
    inputs={"question": "q"},
    options={},
    outputs={"answer": "a"},
    error_code=None,
    model="openai/fake-model",
    usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    cost_usd=None,
    latency_s=0.1,
    started_at=0.0,
    wire="invoke",
)


def test_a_failing_observer_is_logged_and_the_others_still_hear(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[FinishedCall] = []

    class Broken:
        def observe(self, call: FinishedCall) -> None:
            raise RuntimeError("secret prompt text")

    class Listener:
        def observe(self, call: FinishedCall) -> None:
            heard.append(call)

    observers = CallObservers([Broken()])
    observers.add(Listener())
    with caplog.at_level(logging.ERROR, logger="dspy_serve"):
        observers.publish(CALL)
    assert heard == [CALL] and CALL.ok
    assert "Broken failed: RuntimeError" in caplog.text and "secret" not in caplog.text
