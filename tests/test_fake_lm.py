"""The fake LM server, driven by real ``dspy.LM`` + ``dspy.Predict`` over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import dspy
import httpx
import pydantic
import pytest

from tests.support.dspy_prompts import prompt_text, value_from_schema
from tests.support.fake_lm import Answer, AuthFailure, FakeLM, Hang, Malformed, RateLimit, ServerError, Slow

ADAPTERS = [pytest.param(dspy.ChatAdapter, id="chat"), pytest.param(dspy.JSONAdapter, id="json")]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLM]:
    with FakeLM() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeLM) -> FakeLM:
    server.reset()
    return server


def make_lm(fake: FakeLM, model: str = "openai/fake-model", **kwargs: Any) -> dspy.LM:
    return dspy.LM(model, api_base=fake.base_url, api_key="fake", cache=False, num_retries=0, **kwargs)


class Address(pydantic.BaseModel):
    city: str
    zip_code: int


class Typed(dspy.Signature):  # type: ignore[misc]
    """Extract typed facts."""

    question: str = dspy.InputField()
    count: int = dspy.OutputField()
    score: float = dspy.OutputField()
    ok: bool = dspy.OutputField()
    label: Literal["positive", "negative"] = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    address: Address = dspy.OutputField()


# ── Answers ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_predict_returns_scripted_answer(fake: FakeLM, adapter: type[dspy.ChatAdapter]) -> None:
    fake.answers = {"answer": "Paris"}
    with dspy.context(lm=make_lm(fake), adapter=adapter()):
        result = dspy.Predict("question -> answer")(question="Capital of France?")
    assert result.answer == "Paris"
    assert fake.requests_started == fake.requests_completed == 1
    assert "Capital of France?" in prompt_text(fake.last_request)


@pytest.mark.asyncio
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_acall_returns_scripted_answer(fake: FakeLM, adapter: type[dspy.ChatAdapter]) -> None:
    fake.answers = lambda body: {"answer": f"{len(body['messages'])} messages"}
    with dspy.context(lm=make_lm(fake), adapter=adapter()):
        result = await dspy.Predict("question -> answer").acall(question="Capital of France?")
    assert result.answer == "2 messages"


@pytest.mark.parametrize(
    ("adapter", "model", "response_format"),
    [
        (dspy.ChatAdapter, "openai/fake-model", None),
        (dspy.JSONAdapter, "openai/fake-model", None),  # unknown model: JSON requested by the prompt only
        (dspy.JSONAdapter, "openai/gpt-4o-mini", "json_schema"),  # known model: structured outputs
    ],
)
def test_typed_outputs_default_values(
    fake: FakeLM, adapter: type[dspy.ChatAdapter], model: str, response_format: str | None
) -> None:
    with dspy.context(lm=make_lm(fake, model), adapter=adapter()):
        result = dspy.Predict(Typed)(question="q")
    assert (result.count, result.score, result.ok, result.label) == (1, 1.5, True, "positive")
    assert result.tags == ["fake tags"]
    assert result.address == Address(city="fake city", zip_code=1)
    assert (fake.last_request.get("response_format") or {}).get("type") == response_format


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_typed_outputs_overrides(fake: FakeLM, adapter: type[dspy.ChatAdapter]) -> None:
    fake.answers = {
        "count": 7,
        "ok": False,
        "label": "negative",
        "tags": ["a", "b"],
        "address": {"city": "Oslo", "zip_code": 150},
    }
    with dspy.context(lm=make_lm(fake), adapter=adapter()):
        result = dspy.Predict(Typed)(question="q")
    assert (result.count, result.ok, result.label, result.tags) == (7, False, "negative", ["a", "b"])
    assert result.address == Address(city="Oslo", zip_code=150)


def test_value_from_schema_resolves_refs_and_choices() -> None:
    schema = {
        "type": "object",
        "$defs": {"Kind": {"enum": ["x", "y"]}},
        "properties": {
            "kind": {"$ref": "#/$defs/Kind"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
            "when": {"type": "string", "format": "date"},
            "items": {"type": "array", "items": {"type": "number"}},
            "fixed": {"const": 3},
        },
    }
    expected = {"kind": "x", "maybe": 1, "when": "2024-01-01", "items": [1.5], "fixed": 3}
    assert value_from_schema(schema) == expected


# ── Scripting ────────────────────────────────────────────────────────────────


def test_push_is_fifo_and_when_rules_come_first(fake: FakeLM) -> None:
    fake.push(
        Answer(fields={"answer": "first"}),
        Answer(text="[[ ## answer ## ]]\nsecond\n\n[[ ## completed ## ]]"),
    )
    fake.when("special", Answer(fields={"answer": "ruled"}), times=1)
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=make_lm(fake), adapter=dspy.ChatAdapter()):
        answers = [predict(question=q).answer for q in ("special", "special", "plain", "plain")]
    assert answers == ["ruled", "first", "second", "fake answer"]


def test_push_rejects_behaviour_classes(fake: FakeLM) -> None:
    with pytest.raises(TypeError, match="behaviour instance"):
        fake.push(Hang)  # type: ignore[arg-type]


def test_requests_record_bodies_including_demos(fake: FakeLM) -> None:
    predict = dspy.Predict("question -> answer")
    predict.demos = [dspy.Example(question="demo question", answer="demo answer")]
    with dspy.context(lm=make_lm(fake, temperature=0.5), adapter=dspy.ChatAdapter()):
        predict(question="real question")
    (body,) = fake.requests
    assert body["model"] == "fake-model"
    assert body["temperature"] == 0.5
    assert "demo question" in prompt_text(body)
    assert "demo answer" in prompt_text(body)


def test_latency_and_slow_are_honoured(fake: FakeLM) -> None:
    fake.latency = 0.2
    fake.push(Answer(), Slow(0.2))
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=make_lm(fake), adapter=dspy.ChatAdapter()):
        durations = []
        for _ in range(2):
            start = time.perf_counter()
            predict(question="q")
            durations.append(time.perf_counter() - start)
    assert 0.2 <= durations[0] < 1.0
    assert 0.4 <= durations[1] < 1.2


@pytest.mark.asyncio
async def test_concurrent_requests_overlap(fake: FakeLM) -> None:
    fake.latency = 0.3
    predict = dspy.Predict("question -> answer")
    start = time.perf_counter()
    with dspy.context(lm=make_lm(fake), adapter=dspy.ChatAdapter()):
        await asyncio.gather(*(predict.acall(question=f"q{i}") for i in range(4)))
    assert time.perf_counter() - start < 0.9
    assert fake.peak_in_flight == 4
    assert fake.in_flight == 0


# ── Failures, as DSPy 3.4 surfaces them ─────────────────────────────────────


def test_rate_limit_carries_retry_after(fake: FakeLM) -> None:
    fake.push(RateLimit(retry_after=2.5))
    with dspy.context(lm=make_lm(fake)), pytest.raises(dspy.LMRateLimitError) as info:
        dspy.Predict("question -> answer")(question="q")
    assert info.value.retry_after == 2.5
    assert info.value.status == 429


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        (ServerError(), dspy.LMServerError),
        (ServerError(status=503), dspy.LMServerError),
        (ServerError(status=504), dspy.LMTimeoutError),  # a provider-side timeout
        (AuthFailure(), dspy.LMAuthError),
    ],
)
def test_http_errors_map_to_dspy_errors(fake: FakeLM, behaviour: Any, error: type[Exception]) -> None:
    fake.push(behaviour)
    with dspy.context(lm=make_lm(fake)), pytest.raises(error):
        dspy.Predict("question -> answer")(question="q")
    assert fake.requests_completed == 1


def test_num_retries_retries_after_the_hint(fake: FakeLM) -> None:
    fake.push(RateLimit(retry_after=0.05), RateLimit(retry_after=0.05))  # without a hint DSPy backs off 1-2 s
    with dspy.context(lm=make_lm(fake).copy(num_retries=2)):
        result = dspy.Predict("question -> answer")(question="q")
    assert result.answer == "fake answer"
    assert fake.requests_started == 3


def test_malformed_output_fails_chat_then_json_fallback(fake: FakeLM) -> None:
    fake.when("unparseable", Malformed())
    with dspy.context(lm=make_lm(fake), adapter=dspy.ChatAdapter()), pytest.raises(dspy.AdapterParseError):
        dspy.Predict("question -> answer")(question="unparseable")
    chat_attempt, json_fallback = fake.requests
    assert "[[ ## completed ## ]]" in prompt_text(chat_attempt)
    assert "Respond with a JSON object" in prompt_text(json_fallback)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_hang_times_out_and_counts_disconnect(fake: FakeLM, stream: bool) -> None:
    fake.push(Hang())
    predict = dspy.Predict("question -> answer")

    def call() -> None:
        if stream:
            list(dspy.streamify(predict, async_streaming=False)(question="q"))
        else:
            predict(question="q")

    # The native lm15 engine reports a client-side read timeout as a transport error, not LMTimeoutError.
    with dspy.context(lm=make_lm(fake, timeout=0.3)), pytest.raises(dspy.LMTransportError, match="timed out"):
        call()
    assert fake.wait_for(lambda: fake.requests_disconnected == 1)
    assert fake.requests_completed == 0


# ── Streaming ────────────────────────────────────────────────────────────────


@pytest.mark.asyncio
async def test_streamify_yields_field_chunks_then_prediction(fake: FakeLM) -> None:
    fake.answers = {"answer": "Paris is the capital of France."}
    fake.chunk_chars = 3
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener])
    chunks: list[dspy.streaming.StreamResponse] = []
    final = None
    with dspy.context(lm=make_lm(fake), adapter=dspy.ChatAdapter()):
        async for item in program(question="Capital of France?"):
            if isinstance(item, dspy.streaming.StreamResponse):
                chunks.append(item)
            elif isinstance(item, dspy.Prediction):
                final = item
    assert len(chunks) > 3
    assert "".join(c.chunk for c in chunks) == "Paris is the capital of France."
    assert chunks[-1].is_last_chunk
    assert {c.signature_field_name for c in chunks} == {"answer"}
    assert final is not None
    assert final.answer == "Paris is the capital of France."
    assert fake.last_request["stream"] is True


def test_stream_errors_before_first_chunk(fake: FakeLM) -> None:
    fake.push(RateLimit(retry_after=1))
    program = dspy.streamify(dspy.Predict("question -> answer"), async_streaming=False)
    with dspy.context(lm=make_lm(fake)), pytest.raises(dspy.LMRateLimitError):
        list(program(question="q"))


# ── Raw protocol and lifecycle ───────────────────────────────────────────────


def test_raw_protocol(fake: FakeLM) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 40}]}
    with httpx.Client(base_url=fake.base_url) as client:
        assert client.get("/models").json()["data"][0]["id"] == "fake-model"
        reply = client.post("/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == "fake response"
        assert reply["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        stream = client.post(
            "/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        events = [line.removeprefix("data: ") for line in stream.text.splitlines() if line]
        assert events[-1] == "[DONE]"
        frames = [json.loads(e) for e in events[:-1]]
        text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames if f["choices"])
        assert text == "fake response"
        assert frames[-1]["usage"]["completion_tokens"] == 4
        assert client.post("/elsewhere", json=body).status_code == 404


def test_stop_is_prompt_with_a_hanging_request() -> None:
    fake = FakeLM().start()
    fake.push(Hang())
    replies: list[int] = []

    def call() -> None:
        reply = httpx.post(f"{fake.base_url}/chat/completions", json={"messages": []}, timeout=10)
        replies.append(reply.status_code)

    caller = threading.Thread(target=call)
    caller.start()
    assert fake.wait_for(lambda: fake.in_flight == 1)
    start = time.perf_counter()
    fake.stop()
    assert time.perf_counter() - start < 2
    caller.join(5)
    assert replies == [503]
    fake.stop()  # idempotent


def test_litellm_engine_path(fake: FakeLM) -> None:
    """DSPy's LiteLLM fallback (e.g. for client settings lm15 cannot carry) speaks to the same fake."""
    fake.answers = {"answer": "via litellm"}
    lm = make_lm(fake, engine="litellm")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        assert dspy.Predict("question -> answer")(question="q").answer == "via litellm"
        listener = dspy.streaming.StreamListener(signature_field_name="answer")
        program = dspy.streamify(
            dspy.Predict("question -> answer"), stream_listeners=[listener], async_streaming=False
        )
        items = list(program(question="q"))
    assert "".join(i.chunk for i in items if isinstance(i, dspy.streaming.StreamResponse)) == "via litellm"
    assert fake.last_request["stream"] is True
