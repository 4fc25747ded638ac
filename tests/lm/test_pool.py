"""When the pooled engine's call may go through DSPy's LiteLLM engine instead: only when it was
refused before anything was sent, never when a refusal came back with a response."""

from __future__ import annotations

import base64

import dspy
import pytest
from dspy.lm15 import UnsupportedFeatureError

from dspy_serve.lm.pool import NativeRouteRefused, pooled_engines, refused_before_sending
from dspy_serve.lm.registry import ServingLM

BASE_URL = "http://127.0.0.1:9/v1"  # never called: every check here is offline
NAMED_FILE = {
    "type": "file",
    "file": {"file_data": f"data:text/plain;base64,{base64.b64encode(b'hi').decode()}", "filename": "a.txt"},
}


@pytest.fixture
def lm() -> ServingLM:
    engines = pooled_engines("openai/gpt-4o-mini", max_connections=2, api_base=BASE_URL, timeout=5)
    assert engines is not None, "DSPy routes OpenAI models natively"
    sync, asynchronous = engines
    return ServingLM("openai/gpt-4o-mini", engine=sync, async_engine=asynchronous)


def failed(cause: BaseException) -> dspy.LMUnsupportedFeatureError:
    error = dspy.LMUnsupportedFeatureError(str(cause))
    error.__cause__ = cause
    return error


def test_a_call_dspy_cannot_make_canonical_goes_to_the_same_endpoint(lm: ServingLM) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Summarize:"}, NAMED_FILE]}]
    refusal = failed(UnsupportedFeatureError("DocumentPart has no filename slot"))

    clients = refused_before_sending(refusal, lm, (None, messages, {}))

    assert clients == {"timeout": 5, "api_base": BASE_URL}


def test_a_refusal_read_from_a_response_is_never_sent_again(lm: ServingLM) -> None:
    # lm15 refuses a response that carries several choices when none was asked: the request was
    # sent (and billed), so it must not go out a second time through LiteLLM.
    messages = [{"role": "user", "content": "Capital of France?"}]
    refusal = failed(UnsupportedFeatureError("the body carries 2 choices"))

    assert refused_before_sending(refusal, lm, (None, messages, {})) is None


def test_content_the_native_route_refuses_at_planning_goes_to_the_clients_it_names(lm: ServingLM) -> None:
    planned = NativeRouteRefused(UnsupportedFeatureError("audio"), {"api_base": BASE_URL, "timeout": 5})

    assert refused_before_sending(failed(planned), lm, (None, [], {})) == {"api_base": BASE_URL, "timeout": 5}


def test_other_failures_are_not_routed_around(lm: ServingLM) -> None:
    messages = [{"role": "user", "content": [NAMED_FILE]}]

    assert refused_before_sending(dspy.LMServerError("500"), lm, (None, messages, {})) is None
    assert (
        refused_before_sending(
            failed(UnsupportedFeatureError("x")), dspy.LM("openai/gpt-4o-mini"), (None, messages, {})
        )
        is None
    )
