"""Token streaming over SSE, and cancellation when the client goes away, on a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

SERVING = PROGRAMS / "serving.py"
ANSWER = "Paris is the capital and largest city of France."


def target(name: str, alias: str | None = None) -> str:
    return f"{alias or name}={SERVING}:{name}"


def read_events(response: httpx.Response) -> Iterator[tuple[float, str, Any]]:
    """(seconds since the request, event name or 'comment', parsed data) as they arrive."""
    started = time.monotonic()
    event = None
    for line in response.iter_lines():
        if line.startswith(":"):
            yield time.monotonic() - started, "comment", line
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield time.monotonic() - started, str(event), json.loads(line.removeprefix("data: "))


def stream(base_url: str, path: str, body: dict[str, Any]) -> list[tuple[float, str, Any]]:
    with httpx.stream("POST", base_url + path, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        return list(read_events(response))


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_tokens_arrive_incrementally_then_one_prediction(
    fake_lm: FakeLM, provider_key: str, adapter: str
) -> None:
    fake_lm.answers = {"answer": ANSWER}
    fake_lm.chunk_delay, fake_lm.chunk_chars = 0.05, 4
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], adapter=adapter))
    with serving(app) as server:
        events = stream(server.base_url, "/qa/stream", {"inputs": {"question": "Capital of France?"}})
    names = [name for _, name, _ in events]
    assert names[-1] == "prediction" and names.count("prediction") == 1
    tokens = [(at, data) for at, name, data in events if name == "token"]
    assert len(tokens) > 5
    assert "".join(data["chunk"] for _, data in tokens) == ANSWER
    assert {(data["predictor"], data["field"]) for _, data in tokens} == {("self", "answer")}
    finished = events[-1][0]
    assert tokens[0][0] < finished / 2, "the first token must not wait for the whole answer"
    prediction = events[-1][2]
    assert prediction["outputs"] == {"answer": ANSWER}
    assert prediction["usage"]["openai/fake-model"]["completion_tokens"] > 0


def test_every_predictor_streams_and_reports_progress(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"query": "capital france", "answer": ANSWER}
    app = create_app(fake_settings(fake_lm, programs=[target("TwoStepAsync", "two")]))
    with serving(app) as server:
        events = stream(server.base_url, "/two/stream", {"inputs": {"question": "Capital of France?"}})
    statuses = [data["message"] for _, name, data in events if name == "status"]
    assert statuses == ["Running rewrite...", "Running answer..."]
    streamed: dict[tuple[str, str], str] = {}
    for _, name, data in events:
        if name == "token":
            key = (data["predictor"], data["field"])
            streamed[key] = streamed.get(key, "") + data["chunk"]
    assert streamed == {("rewrite", "query"): "capital france", ("answer", "answer"): ANSWER}


def test_an_lm_failure_mid_program_is_a_typed_error_event(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.when("Capital", ServerError(500))
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    with serving(app) as server:
        events = stream(server.base_url, "/qa/stream", {"inputs": {"question": "Capital?"}})
    name, problem = events[-1][1], events[-1][2]
    assert name == "error"
    assert problem["status"] == 502 and problem["code"] == "upstream_error"
    assert problem["request_id"]
    assert "prediction" not in [n for _, n, _ in events]


def test_refusals_before_the_stream_starts_are_http_statuses(fake_lm: FakeLM, provider_key: str) -> None:
    app = create_app(fake_settings(fake_lm, programs=[target("qa")]))
    with serving(app) as server:
        response = httpx.post(
            server.base_url + "/qa/stream",
            json={"inputs": {"question": "q"}, "options": {"model": "openai/elsewhere"}},
            timeout=10,
        )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_idle_streams_get_heartbeats(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 0.8
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], stream_heartbeat=0.2))
    with serving(app) as server:
        events = stream(server.base_url, "/qa/stream", {"inputs": {"question": "q"}})
    assert [name for _, name, _ in events].count("comment") >= 2
    assert events[-1][1] == "prediction"


def test_a_stream_past_its_deadline_ends_with_a_timeout_error(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 5
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], timeout=0.5))
    with serving(app) as server:
        events = stream(server.base_url, "/qa/stream", {"inputs": {"question": "q"}})
    assert events[-1][1] == "error" and events[-1][2]["status"] == 504
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)


def test_a_cached_answer_streams_only_the_prediction(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": ANSWER}
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], cache=True))
    body = {"inputs": {"question": "Is this cached? " + str(time.time())}}
    with serving(app) as server:
        first = stream(server.base_url, "/qa/stream", body)
        second = stream(server.base_url, "/qa/stream", body)
    assert "token" in [name for _, name, _ in first]
    assert [name for _, name, _ in second if name != "status"] == ["prediction"]
    assert second[-1][2]["outputs"] == {"answer": ANSWER}
    assert fake_lm.requests_started == 1


# --- cancellation -----------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["TwoStepAsync", "TwoStepSync"])
def test_leaving_mid_stream_stops_the_program(fake_lm: FakeLM, provider_key: str, program: str) -> None:
    fake_lm.answers = {"query": "a fairly long search query that streams slowly", "answer": "never"}
    fake_lm.chunk_delay, fake_lm.chunk_chars = 0.1, 2
    app = create_app(fake_settings(fake_lm, programs=[target(program, "two")]))
    with serving(app) as server:
        with httpx.stream(
            "POST", server.base_url + "/two/stream", json={"inputs": {"question": "q"}}, timeout=30
        ) as response:
            for _, name, _ in read_events(response):
                if name == "token":
                    break  # leave after the first token: the client hangs up
        # The first LM call streams for ~2.4 s; wait well past it.
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)
        time.sleep(1.0)
    assert fake_lm.requests_started == 1, "the second LM call must never start"


@pytest.mark.parametrize("program", ["TwoStepAsync", "TwoStepSync"])
def test_leaving_mid_invoke_stops_the_program(fake_lm: FakeLM, provider_key: str, program: str) -> None:
    fake_lm.latency = 1.0
    app = create_app(fake_settings(fake_lm, programs=[target(program, "two")]))
    with serving(app) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + "/two/invoke", json={"inputs": {"question": "q"}}, timeout=0.3)
        time.sleep(2.5)  # past the first call's latency, and the second's if it had started
    assert fake_lm.requests_started == 1, "the second LM call must never start"
    # The in-flight LM request is closed at once, for a sync-only program too.
    assert fake_lm.requests_disconnected == 1


# --- decoding JSONAdapter's raw string chunks -------------------------------------------------


def json_field_text(raw: str, split: int) -> str:
    """Field ``answer`` of the JSON object ``{"answer": RAW}``, fed ``split`` characters at a time."""
    from dspy_serve.serving.response_fields import ResponseFields, TextFormat

    reader = ResponseFields(TextFormat.JSON, ["answer"])
    whole = '{"answer":' + raw + "}"
    pieces = [whole[i : i + split] for i in range(0, len(whole), split)]
    out = [piece for chunk in pieces for piece in reader.feed(chunk)] + reader.close()
    assert {field for field, _ in out} <= {"answer"}
    return "".join(text for _, text in out)


@pytest.mark.parametrize("split", [1, 2, 3, 7, 100])
def test_json_string_chunks_decode_to_text_whatever_the_split(split: int) -> None:
    raw = ' "Say \\"hi\\"\\nto caf\\u00e9 \\\\ now" , '
    assert json_field_text(raw, split) == 'Say "hi"\nto café \\ now'


@pytest.mark.parametrize("split", [1, 2, 5, 6, 7, 11, 12, 13, 100])
def test_json_string_decoding_survives_surrogates_and_invalid_escapes(split: int) -> None:
    raw = (
        '"pair \\uD83D\\uDE00, lone \\uD83D, low \\uDE00, bad \\uZZZZ, '
        'high-high \\uD83D\\uD83D\\uDE00 \\uD83D"'
    )
    text = json_field_text(raw, split)
    assert text == "pair \U0001f600, lone \ufffd, low \ufffd, bad \\uZZZZ, high-high \ufffd\U0001f600 \ufffd"
    text.encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('{"answer": "smile \\uD83D\\uDE00"}', "smile \U0001f600"),
        ('{"answer": "bad \\uZZZZ escape"}', "bad \\uZZZZ escape"),
        ('{"answer": "lone \\uD83D surrogate"}', "lone \ufffd surrogate"),
    ],
    ids=["surrogate-pair", "invalid-escape", "lone-surrogate"],
)
def test_json_adapter_escapes_never_end_a_stream_or_an_invoke_in_a_500(
    fake_lm: FakeLM, provider_key: str, written: str, expected: str
) -> None:
    from tests.support.fake_lm import Answer

    fake_lm.chunk_chars = 3
    app = create_app(fake_settings(fake_lm, programs=[target("qa")], adapter="json"))
    with serving(app) as server:
        fake_lm.push(Answer(text=written))
        events = stream(server.base_url, "/qa/stream", {"inputs": {"question": "Smile?"}})
        fake_lm.push(Answer(text=written))
        invoked = httpx.post(
            server.base_url + "/qa/invoke", json={"inputs": {"question": "Smile?"}}, timeout=30
        )
    assert [name for _, name, _ in events][-1] == "prediction", events[-1]
    assert events[-1][2]["outputs"] == {"answer": expected}
    assert "".join(data["chunk"] for _, name, data in events if name == "token") == expected
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["outputs"] == {"answer": expected}


def test_every_event_matches_the_documented_schema(fake_lm: FakeLM, provider_key: str) -> None:
    import jsonschema

    fake_lm.answers = {"query": "q", "answer": ANSWER}
    fake_lm.when("fail", ServerError(500))
    app = create_app(fake_settings(fake_lm, programs=[target("TwoStepAsync", "two")]))
    with serving(app) as server:
        spec = httpx.get(server.base_url + "/openapi.json").json()
        events = stream(server.base_url, "/two/stream", {"inputs": {"question": "ok"}})
        events += stream(server.base_url, "/two/stream", {"inputs": {"question": "fail"}})
    variants = spec["paths"]["/two/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    by_event = {
        v["properties"]["event"]["const"]: v["properties"]["data"] for v in variants["itemSchema"]["oneOf"]
    }
    seen = set()
    for _, name, data in events:
        if name == "comment":
            continue
        schema = {**by_event[name]["contentSchema"], "components": spec["components"]}
        jsonschema.validate(data, schema)
        seen.add(name)
    assert seen == {"status", "token", "prediction", "error"}
