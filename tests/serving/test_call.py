"""One call, on every wire: each publishes exactly one FinishedCall with the call_id its caller
got back, runs under the server's deadline, and its record agrees with the response, the
metrics and the access log. Over real HTTP against the fake LM."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from dspy_serve.serving.observers import FinishedCall
from tests.support.fake_lm import FakeLM
from tests.support.metrics import samples
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
ASK = {"question": "Capital of France?"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def observe(self, call: FinishedCall) -> None:
        self.calls.append(call)


@pytest.fixture
def recorded(fake_lm: FakeLM, provider_key: str) -> Iterator[tuple[ServerThread, Recorder]]:
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[QA], timeout=1.0))
    recorder = Recorder()
    app.state.service.observers.add(recorder)
    with serving(app) as server:
        yield server, recorder


def sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in lines and lines["data"] != "[DONE]":
            events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


def call_every_wire(base: str) -> dict[str, tuple[int, list[str]]]:
    """Each wire's status and the call ids its caller was given."""
    seen: dict[str, tuple[int, list[str]]] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        invoke = http.post("/qa/invoke", json={"inputs": ASK})
        ids = [invoke.json()["call_id"]] if invoke.status_code == 200 else []
        seen["invoke"] = invoke.status_code, [invoke.headers.get("x-call-id", ""), *ids]
        stream = http.post("/qa/stream", json={"inputs": ASK})
        last = sse(stream.text)[-1]
        seen["stream"] = stream.status_code, [stream.headers["x-call-id"], last[1].get("call_id", "")]
        batch = http.post("/qa/batch", json={"items": [ASK, {"question": 5}]})
        seen["batch"] = batch.status_code, [item["call_id"] for item in batch.json().get("items", [])]
        chat = {"model": "qa", "messages": [{"role": "user", "content": "Capital?"}]}
        openai = http.post("/v1/chat/completions", json=chat)
        seen["openai"] = openai.status_code, [openai.headers.get("x-call-id", "")]
        streamed = http.post("/v1/chat/completions", json={**chat, "stream": True})
        seen["openai-stream"] = streamed.status_code, [streamed.headers.get("x-call-id", "")]
        tool = {"name": "qa", "arguments": ASK}
        mcp = http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": tool},
            headers=MCP_HEADERS,
        )
        result = mcp.json()["result"]
        seen["mcp"] = (
            mcp.status_code,
            [(result.get("_meta") or {}).get("dspy-serve/call", {}).get("call_id", "")],
        )
    return seen


def test_every_wire_publishes_one_finished_call_with_the_id_its_caller_got(
    recorded: tuple[ServerThread, Recorder],
) -> None:
    server, recorder = recorded
    seen = call_every_wire(server.base_url)
    published = {call.call_id: call for call in recorder.calls}
    assert len(published) == len(recorder.calls) == 7, "one record per call (a batch item is a call)"
    invoke_ids, batch_ids = seen["invoke"][1], seen["batch"][1]
    assert invoke_ids[0] == invoke_ids[1] and seen["stream"][1][0] == seen["stream"][1][1]
    given = {invoke_ids[0], seen["stream"][1][0], *batch_ids, seen["openai"][1][0], seen["mcp"][1][0]}
    given.add(seen["openai-stream"][1][0])
    assert given == set(published)
    assert [published[i].wire for i in batch_ids] == ["batch", "batch"]
    good, bad = (published[i] for i in batch_ids)
    assert good.ok and good.outputs == {"answer": "Paris"} and good.usage["total_tokens"] > 0
    assert bad.error_code == "invalid_input" and bad.outputs is None
    wires = sorted(call.wire for call in recorder.calls)
    assert wires == ["batch", "batch", "invoke", "mcp", "openai", "openai", "stream"]
    for call in recorder.calls:
        assert call.program == "qa" and call.version is None and call.key_name is None
        assert call.latency_s >= 0 and call.started_at > 0


def test_the_deadline_holds_on_every_wire(recorded: tuple[ServerThread, Recorder], fake_lm: FakeLM) -> None:
    server, recorder = recorded
    fake_lm.latency = 5.0  # the server's deadline is 1 s
    seen = call_every_wire(server.base_url)
    assert seen["invoke"][0] == 504
    assert {call.error_code for call in recorder.calls} == {"timeout", "invalid_input"}
    assert sorted(call.wire for call in recorder.calls if call.error_code == "timeout") == [
        "batch",
        "invoke",
        "mcp",
        "openai",
        "openai",
        "stream",
    ]
    assert all(call.latency_s < 4 for call in recorder.calls), "none waited for the LM"


def test_a_streams_tokens_agree_in_its_response_metrics_and_access_log(
    recorded: tuple[ServerThread, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """#24: the access log said tokens=null for every successful /stream."""
    server, recorder = recorded
    with caplog.at_level(logging.INFO, logger="dspy_serve.access"):
        stream = httpx.post(f"{server.base_url}/qa/stream", json={"inputs": ASK}, timeout=30)
        metrics = httpx.get(f"{server.base_url}/metrics").text
    prediction = sse(stream.text)[-1][1]
    spent = prediction["usage"]["openai/fake-model"]["total_tokens"]
    entry = next(r for r in caplog.records if r.getMessage().startswith("POST /qa/stream"))
    assert spent > 0
    assert entry.tokens == spent  # type: ignore[attr-defined]
    assert recorder.calls[0].usage["total_tokens"] == spent
    tokens = sum(
        samples(metrics)[
            ("dspy_serve_lm_tokens_total", (("direction", direction), ("model", "openai/fake-model")))
        ]
        for direction in ("in", "out")
    )
    assert tokens == spent


def test_an_observer_that_fails_never_fails_a_call(recorded: tuple[ServerThread, Recorder]) -> None:
    server, recorder = recorded

    class Broken:
        def observe(self, call: FinishedCall) -> None:
            raise RuntimeError("observer bug")

    recorder.calls.clear()
    server.server.config.app.state.service.observers.add(Broken())
    response = httpx.post(f"{server.base_url}/qa/invoke", json={"inputs": ASK}, timeout=30)
    assert response.status_code == 200 and len(recorder.calls) == 1


def test_a_finished_streams_tokens_are_charged_to_its_budget(fake_lm: FakeLM, provider_key: str) -> None:
    """#24: a stream settled its budget before the runner had left its usage: it paid nothing."""
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[QA], token_rate_limit="50/minute"))
    with serving(app) as server:
        stream = httpx.post(f"{server.base_url}/qa/stream", json={"inputs": ASK}, timeout=30)
        after = httpx.post(f"{server.base_url}/qa/invoke", json={"inputs": ASK}, timeout=30)
    assert sse(stream.text)[-1][0] == "prediction"
    assert sse(stream.text)[-1][1]["usage"]["openai/fake-model"]["total_tokens"] > 50
    assert after.status_code == 429, after.text
