"""The OpenAI-compatible API with the official ``openai`` client, against a real server on loopback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from dspy_serve import create_app
from dspy_serve.errors import HTTPProblem, ProxyError, ServeError
from dspy_serve.interop.openai import error_body
from dspy_serve.serving.caller import Caller
from tests.support.dspy_prompts import message_text
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

CHAT = PROGRAMS / "chat_programs.py"
TARGETS = [
    f"qa={PROGRAMS / 'serving.py'}:qa",
    *(f"{name}={CHAT}:{name}" for name in ("chat", "thinker", "ambiguous", "tagged")),
]
ANSWER = "Paris is the capital and largest city of France."


def serve(fake_lm: FakeLM, **overrides: Any) -> Any:
    return serving(create_app(fake_settings(fake_lm, programs=TARGETS, **overrides)))


def client_for(server: ServerThread, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    fake_lm.answers = {"answer": ANSWER, "reasoning": "It is well known."}
    with serve(fake_lm) as running:
        yield running


def test_a_chat_completion_runs_the_named_program(server: ServerThread, fake_lm: FakeLM) -> None:
    completion = client_for(server).chat.completions.create(
        model="qa",
        messages=[
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": "Capital of France?"},
        ],
        temperature=0.5,
        max_completion_tokens=64,
    )
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "qa"
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == ANSWER
    assert completion.model_extra == {"dspy_outputs": {"answer": ANSWER}}
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    sent = fake_lm.last_request
    assert "Capital of France?" in message_text(sent["messages"][-1])
    assert (sent["temperature"], sent.get("max_tokens", sent.get("max_completion_tokens"))) == (0.5, 64)


async def test_the_async_client_and_the_reasoning_program(server: ServerThread) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model="thinker", messages=[{"role": "user", "content": [{"type": "text", "text": "France?"}]}]
        )
    assert completion.choices[0].message.content == ANSWER  # the answer, not the reasoning
    assert completion.model_extra is not None
    assert completion.model_extra["dspy_outputs"] == {"reasoning": "It is well known.", "answer": ANSWER}


def test_streaming_sends_the_reply_field_incrementally(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.chunk_delay, fake_lm.chunk_chars = 0.05, 4
    started = time.monotonic()
    stream = client_for(server).chat.completions.create(
        model="thinker",
        messages=[{"role": "user", "content": "Capital of France?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [(time.monotonic() - started, chunk) for chunk in stream]
    deltas = [chunk.choices[0].delta for _, chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    contents = [
        (at, c.choices[0].delta.content) for at, c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) > 5
    assert "".join(text for _, text in contents) == ANSWER  # no reasoning tokens
    # 12 chunks 0.05 s apart at the LM: they must reach the client as they come, not at the end.
    assert contents[-1][0] - contents[0][0] > 0.3, "the reply must stream, not arrive at once"
    finals = [c for _, c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert finals[0].model_extra is not None and finals[0].model_extra["dspy_outputs"]["answer"] == ANSWER
    last = chunks[-1][1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert {c.id for _, c in chunks} == {last.id}


def test_a_cached_reply_streams_whole(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": ANSWER}
    with serve(fake_lm, cache=True) as server:
        client = client_for(server)
        # A question of its own: DSPy's memory cache is process-wide and other tests share it.
        messages: Any = [{"role": "user", "content": f"Capital of France? {uuid.uuid4().hex}"}]
        client.chat.completions.create(model="qa", messages=messages)
        chunks = list(client.chat.completions.create(model="qa", messages=messages, stream=True))
        body = {"model": "qa", "messages": messages, "stream": True}
        raw = httpx.post(server.base_url + "/v1/chat/completions", json=body).text
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert contents == [ANSWER]
    assert chunks[-1].choices[0].finish_reason == "stop"
    events = [event for event in raw.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2].removeprefix("data: "))
    assert (final["choices"][0]["finish_reason"], final["dspy_outputs"]) == ("stop", {"answer": ANSWER})
    assert fake_lm.requests_started == 1


def test_leaving_mid_stream_stops_the_program(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.chunk_delay, fake_lm.chunk_chars = 0.2, 2
    stream = client_for(server).chat.completions.create(
        model="qa", messages=[{"role": "user", "content": "Capital of France?"}], stream=True
    )
    first = next(chunk for chunk in stream if chunk.choices[0].delta.content)
    stream.close()
    assert ANSWER.startswith(first.choices[0].delta.content or "-")
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)


def test_models_are_the_served_programs(server: ServerThread) -> None:
    client = client_for(server)
    models = client.models.list()
    assert [m.id for m in models] == ["qa", "chat", "thinker", "ambiguous", "tagged"]
    assert {(m.object, m.owned_by) for m in models} == {("model", "dspy-serve")}
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_an_unknown_model_is_not_found(server: ServerThread, fake_lm: FakeLM) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(server).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"], body["code"]) == (
        "invalid_request_error",
        "model",
        "program_not_found",
    )
    assert "qa" in caught.value.message
    assert fake_lm.requests_started == 0


def test_earlier_turns_reach_the_programs_history(server: ServerThread, fake_lm: FakeLM) -> None:
    completion = client_for(server).chat.completions.create(
        model="chat",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "It is Paris."},
            {"role": "user", "content": "And how big is it?"},
        ],
    )
    assert completion.choices[0].message.content == ANSWER
    messages = fake_lm.last_request["messages"]
    turns = [(m["role"], message_text(m)) for m in messages if m["role"] != "system"]
    assert [role for role, _ in turns] == ["user", "assistant", "user"]
    assert "What is the capital of France?" in turns[0][1]
    assert "It is Paris." in turns[1][1]
    assert "And how big is it?" in turns[2][1] and "France" not in turns[2][1]


def test_an_lm_failure_is_a_502_in_openais_shape(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.when("broken", ServerError(500))
    client = client_for(server)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "broken"}])
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"
    assert caught.value.body["code"] == "upstream_error"
    with pytest.raises(openai.APIError) as mid_stream:  # after the first byte: an error chunk
        list(
            client.chat.completions.create(
                model="qa", messages=[{"role": "user", "content": "broken"}], stream=True
            )
        )
    assert "LM provider failed" in mid_stream.value.message


def test_programs_a_chat_cannot_fill_and_invalid_bodies_are_client_errors(server: ServerThread) -> None:
    client = client_for(server)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="context: str, question: str"):
        client.chat.completions.create(model="ambiguous", messages=user)
    with pytest.raises(openai.BadRequestError, match="also needs tags"):
        client.chat.completions.create(model="tagged", messages=user)
    with pytest.raises(openai.BadRequestError, match="must be the user's"):
        client.chat.completions.create(model="qa", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="qa", messages=user, temperature=3)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "temperature"
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        client.chat.completions.create(model="qa", messages=user, max_tokens=10**9)


def test_api_keys_and_rate_limits_apply(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": ANSWER}
    with serve(fake_lm, api_keys=["web:sk-web programs=qa"], rate_limit="2/minute") as server:
        assert httpx.post(server.base_url + "/v1/chat/completions", json={}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client_for(server, api_key="wrong").chat.completions.create(
                model="qa", messages=[{"role": "user", "content": "hi"}]
            )
        client = client_for(server, api_key="sk-web")
        reply = client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == ANSWER
        assert [m.id for m in client.models.list()] == ["qa"]  # only what the key may call
        with pytest.raises(openai.NotFoundError):  # outside the key: as if it did not exist (#22)
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as limited:  # the third request this minute
            client.chat.completions.create(model="qa", messages=[{"role": "user", "content": "hi"}])
    assert limited.value.response.headers["retry-after"]
    assert isinstance(limited.value.body, dict) and limited.value.body["code"] == "rate_limited"
    assert fake_lm.requests_started == 2


def test_max_input_chars_reaches_the_chat_history(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": ANSWER}
    with serve(fake_lm, max_input_chars=50) as running:
        client = client_for(running)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.chat.completions.create(
                model="chat",
                messages=[
                    {"role": "user", "content": "x" * 51},
                    {"role": "assistant", "content": "It is Paris."},
                    {"role": "user", "content": "And how big is it?"},
                ],
            )
    assert isinstance(refused.value.body, dict) and "at most 50 characters" in refused.value.body["message"]
    assert fake_lm.requests_started == 0


def test_the_reply_is_the_last_str_output_unless_the_operator_picks_one(
    fake_lm: FakeLM, provider_key: str
) -> None:
    fake_lm.answers = {"topic": "geography", "reply": ANSWER}
    triage = [f"triage={CHAT}:triage"]
    with serving(create_app(fake_settings(fake_lm, programs=triage))) as default:
        reply = client_for(default).chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "Capital of France?"}]
        )
    assert reply.choices[0].message.content == ANSWER
    chosen = fake_settings(fake_lm, programs=triage, chat_replies=["triage=topic"])
    with serving(create_app(chosen)) as picked:
        reply = client_for(picked).chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "Capital of France?"}]
        )
    assert reply.choices[0].message.content == "geography"
    for spec, message in (
        ("triage=topc", "'triage' has no str output 'topc'; its str outputs: topic, reply"),
        ("nope=topic", "NAME one of the programs: triage"),
    ):
        with pytest.raises(ValueError, match=message):
            create_app(fake_settings(fake_lm, programs=triage, chat_replies=[spec]))


def _every_error() -> list[ServeError]:
    def subclasses(cls: type[ServeError]) -> list[type[ServeError]]:
        return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]

    return [
        cls(404, "gone") if cls in (HTTPProblem, ProxyError) else cls("what went wrong")  # type: ignore[call-arg]
        for cls in [ServeError, *subclasses(ServeError)]
    ]


@pytest.mark.parametrize("error", _every_error(), ids=lambda error: type(error).__name__)
def test_every_error_renders_as_one_openai_error(error: ServeError) -> None:
    caller = Caller("127.0.0.1")
    body = error_body(caller, error)
    error_body(caller, error)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == error.code and body["error"]["message"].startswith(error.detail)
    kinds = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    expected = kinds.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    assert body["error"]["type"] == expected
    assert caller.error_codes == [error.code], "counted once"
