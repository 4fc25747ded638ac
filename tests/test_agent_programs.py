"""The programs DSPy's tutorials build (ReAct and ReActV2 with blocking tools, BestOfN, Refine,
Parallel in a sync module, a sync custom module, Audio inputs), served over real HTTP against the
fake LM, through invoke, batch, stream, /v1 and MCP."""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import openai
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from dspy_serve import create_app
from tests.support import fake_lm as fakes
from tests.support.dspy_prompts import prompt_text, react_agent, react_v2_agent
from tests.support.endpoints import read_events
from tests.support.fake_lm import FakeLM, Hang
from tests.support.metrics import samples
from tests.support.programs import agent_programs
from tests.support.servers import ServerThread, serving
from tests.support.settings import fake_settings

PROGRAMS = "tests.support.programs.agent_programs"
NAMES = ["agent", "agent_v2", "researcher", "best_of_3", "refine", "parallel_qa", "sync_rag", "transcribe"]
NAMES += ["shout", "rlm", "flex"]
CLIP = {"data": base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode(), "audio_format": "wav"}
INPUTS: dict[str, dict[str, Any]] = {name: {"question": "Capital of France?"} for name in NAMES}


def cases(*names: str) -> list[Any]:
    """``names`` as test parameters. Flex hands its predictors a wrapper of the LM, so DSPy 3.4's
    adapter no longer recognises its own call and warns about ``messages=`` (in plain DSPy too)."""
    dspy_warns = pytest.mark.filterwarnings("ignore:Passing OpenAI-style message:DeprecationWarning")
    return [pytest.param(name, marks=dspy_warns) if name == "flex" else name for name in names]


INPUTS["transcribe"] = {"clip": CLIP}
INPUTS["rlm"] = {"context": "Paris is the capital of France.", "question": "Capital of France?"}
ANSWER = "Paris"
TOOLS = ["search_wikipedia", "lookup_population", "finish"]  # what agent_script has the agent call
SEARCH_THEN_COUNT = [("search_wikipedia", {"query": "Paris"}), ("lookup_population", {"city": "Paris"})]


def agent_script(fake: FakeLM) -> None:
    """ReAct steps for the ReAct agents (each takes the tools it has), then the extract step's
    answer; ReActV2's turns, then its submitted answer."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        if "[[ ## tool_calls ## ]]" in prompt_text(body):  # ReActV2's output field
            return react_v2_agent(*SEARCH_THEN_COUNT, answer=ANSWER)(body)
        if "[[ ## code ## ]]" in prompt_text(body):  # RLM's: code that reads its input, then submits
            return {"reasoning": "Read it.", "code": f"assert 'Paris' in context\nSUBMIT(answer={ANSWER!r})"}
        tools = re.findall(r"\(\d+\) (\w+)", prompt_text(body))
        steps = [("search_wikipedia", {"query": "Paris"})] if "search_wikipedia" in tools else []
        steps.append(("lookup_population", {"city": "Paris"}))
        return {**react_agent(*steps)(body), "answer": ANSWER, "transcript": "hello"}

    fake.answers = answer


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setattr(agent_programs, "TOOL_SECONDS", 0.05)
    agent_script(fake_lm)
    programs = [f"{name}={PROGRAMS}:{name}" for name in NAMES]
    with serving(create_app(fake_settings(fake_lm, programs=programs, timeout=30))) as running:
        yield running


def stream(server: ServerThread, name: str, inputs: dict[str, Any]) -> list[tuple[str, Any]]:
    with httpx.stream("POST", f"{server.base_url}/{name}/stream", json={"inputs": inputs}, timeout=30) as r:
        assert r.status_code == 200
        return read_events(r)


def tokens_by_step(events: list[tuple[str, Any]]) -> dict[tuple[str, str], str]:
    streamed: dict[tuple[str, str], str] = {}
    for name, data in events:
        if name == "token":
            key = (data["predictor"], data["field"])
            streamed[key] = streamed.get(key, "") + data["chunk"]
    return streamed


# --- the whole matrix -------------------------------------------------------------------------


@pytest.mark.parametrize("name", cases(*NAMES))
def test_every_program_answers_on_invoke_batch_and_stream(server: ServerThread, name: str) -> None:
    inputs = INPUTS[name]
    invoked = httpx.post(f"{server.base_url}/{name}/invoke", json={"inputs": inputs}, timeout=30)
    assert invoked.status_code == 200, invoked.text
    outputs = invoked.json()["outputs"]
    assert outputs.get("answer", outputs.get("transcript"))
    assert invoked.json()["usage"]["openai/fake-model"]["total_tokens"] > 0

    batch = httpx.post(f"{server.base_url}/{name}/batch", json={"items": [inputs, inputs]}, timeout=60)
    assert batch.status_code == 200, batch.text
    assert [item["outputs"] for item in batch.json()["items"]] == [outputs, outputs]

    events = stream(server, name, inputs)
    assert events[-1] == ("prediction", events[-1][1]), events[-1]
    assert events[-1][1]["outputs"] == outputs


@pytest.mark.parametrize(
    "name", cases("agent", "agent_v2", "researcher", "best_of_3", "refine", "parallel_qa", "sync_rag", "flex")
)
def test_every_program_answers_on_v1_and_mcp(server: ServerThread, name: str) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    completion = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Capital of France?"}]
    )
    assert completion.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Capital of France?"}], stream=True
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]

    result = call_tool(server, name)
    assert not result.is_error, result.content
    assert result.structured_content == completion.model_extra["dspy_outputs"]  # type: ignore[index]


def call_tool(server: ServerThread, name: str) -> Any:
    async def call() -> Any:
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http)) as mcp:
            return await mcp.call_tool(name, INPUTS[name])

    return anyio.run(call)


def test_audio_inputs_on_mcp_and_not_from_a_chat(server: ServerThread) -> None:
    result = call_tool(server, "transcribe")
    assert not result.is_error, result.content
    assert result.structured_content == {"transcript": "hello"}
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError):  # a chat message cannot carry a dspy.Audio input
        client.chat.completions.create(model="transcribe", messages=[{"role": "user", "content": "hi"}])


# --- 3. sync tools never block the event loop -------------------------------------------------


@pytest.mark.parametrize("name", ["agent", "agent_v2"])
def test_a_blocking_tool_leaves_the_server_responsive(
    fake_lm: FakeLM, provider_key: str, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The issue's measure: a 2 s blocking tool, and /health/live answering in under 50 ms."""
    monkeypatch.setattr(agent_programs, "TOOL_SECONDS", 2.0)
    agent_programs.searches_finished.clear()
    agent_script(fake_lm)
    app = create_app(fake_settings(fake_lm, programs=[f"{name}={PROGRAMS}:{name}"]))
    with serving(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as probe:
        probe.get("/health/live")  # connect before the tool runs
        replies: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: replies.append(
                httpx.post(f"{server.base_url}/{name}/invoke", json={"inputs": INPUTS[name]}, timeout=30)
            )
        )
        call.start()
        assert agent_programs.search_running.wait(10), "the tool never ran"
        latencies = []
        while agent_programs.search_running.is_set():
            started = time.perf_counter()
            assert probe.get("/health/live").status_code == 200
            if agent_programs.search_running.is_set():  # answered while the tool still blocked
                latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        call.join(30)
    assert agent_programs.searches_finished.is_set()
    assert replies and replies[0].status_code == 200, replies and replies[0].text
    assert len(latencies) >= 5, f"only {len(latencies)} probes answered during the 2 s tool"
    assert min(latencies) < 0.05, latencies


def test_rlm_running_the_lms_code_leaves_the_server_responsive(fake_lm: FakeLM, provider_key: str) -> None:
    """RLM runs the code its LM writes with a blocking interpreter call, in its ``aforward`` too:
    served as is, the event loop would wait for the code. It runs on the thread path instead."""
    code = f"import time\ntime.sleep(2.5)\nSUBMIT(answer={ANSWER!r})"
    fake_lm.answers = {"reasoning": "Wait, then answer.", "code": code}
    app = create_app(fake_settings(fake_lm, programs=[f"rlm={PROGRAMS}:rlm"], timeout=30))
    with serving(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as probe:
        probe.get("/health/live")  # connect before the code runs
        replies: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: replies.append(
                httpx.post(f"{server.base_url}/rlm/invoke", json={"inputs": INPUTS["rlm"]}, timeout=30)
            )
        )
        call.start()
        assert fake_lm.wait_for(lambda: len(fake_lm.requests) >= 1, timeout=10), "the LM was never asked"
        waits = []
        while call.is_alive():
            started = time.perf_counter()
            assert probe.get("/health/live").status_code == 200
            waits.append(time.perf_counter() - started)
            time.sleep(0.02)
        call.join()
    assert replies and replies[0].status_code == 200, replies and replies[0].text
    assert replies[0].json()["outputs"] == {"answer": ANSWER}, "what the code submitted"
    assert max(waits) < 1.0, f"a probe waited {max(waits):.2f} s: the loop ran the code"


# --- 4. streaming wherever invoke works -------------------------------------------------------


def test_react_streams_every_iteration(server: ServerThread) -> None:
    events = stream(server, "agent", INPUTS["agent"])
    statuses = [data["message"] for name, data in events if name == "status"]
    assert statuses.count("Running react...") == 3
    assert "Calling tool search_wikipedia..." in statuses and "Calling tool lookup_population..." in statuses
    assert statuses[-1] == "Running extract.predict..."
    thoughts = tokens_by_step(events)[("react", "next_thought")]
    assert all(f"Step {n}:" in thoughts for n in (1, 2, 3)), thoughts
    assert tokens_by_step(events)[("extract.predict", "answer")] == ANSWER
    assert events[-1][0] == "prediction"


def test_react_v2_is_served_as_its_signature_and_streams_every_turn(server: ServerThread) -> None:
    described = httpx.get(f"{server.base_url}/programs/agent_v2", timeout=10).json()
    assert described["signature"] == "question -> answer", "the agent step's tool_calls are not outputs"

    events = stream(server, "agent_v2", INPUTS["agent_v2"])
    statuses = [data["message"] for name, data in events if name == "status"]
    assert statuses.count("Running react...") == 3
    called = [message for message in statuses if message.startswith("Calling tool")]
    tools = [*(tool for tool, _ in SEARCH_THEN_COUNT), "submit"]
    assert called == [f"Calling tool {tool}..." for tool in tools]
    thoughts = tokens_by_step(events)[("react", "next_thought")]
    assert all(f"Turn {n}:" in thoughts for n in (1, 2, 3)), thoughts
    assert events[-1] == ("prediction", events[-1][1])
    assert events[-1][1]["outputs"] == {"answer": ANSWER}, "what submit returned, and nothing else"


def test_react_streams_every_iteration_as_text_under_json_adapter(
    fake_lm: FakeLM, provider_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_programs, "TOOL_SECONDS", 0.01)
    agent_script(fake_lm)
    app = create_app(fake_settings(fake_lm, programs=[f"agent={PROGRAMS}:agent"], adapter="json"))
    with serving(app) as server:
        events = stream(server, "agent", INPUTS["agent"])
    thoughts = tokens_by_step(events)[("react", "next_thought")]
    assert thoughts == "".join(f"Step {n}: I should call {tool}." for n, tool in enumerate(TOOLS, 1))
    assert events[-1][0] == "prediction" and events[-1][1]["outputs"]["answer"] == ANSWER


@pytest.mark.parametrize("name", ["best_of_3", "refine"])
def test_best_of_n_and_refine_stream_every_attempt(server: ServerThread, fake_lm: FakeLM, name: str) -> None:
    fake_lm.answers = {"answer": "Paris is big", "reasoning": "Known."}  # never one word: 3 attempts
    events = stream(server, name, INPUTS[name])
    statuses = [data["message"] for event, data in events if event == "status"]
    assert statuses.count("Running module.predict...") == 3, events
    answers = [data["chunk"] for event, data in events if event == "token" and data["field"] == "answer"]
    assert "".join(answers) == "Paris is big" * 3
    assert events[-1][0] == "prediction" and events[-1][1]["outputs"]["answer"] == "Paris is big"


def test_parallel_in_a_sync_module_streams_and_reports_all_usage(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    events = stream(server, "parallel_qa", INPUTS["parallel_qa"])
    assert events[-1][0] == "prediction"
    assert [data["message"] for name, data in events if name == "status"] == ["Running qa.predict..."] * 3
    # The three branches run one predictor at once: their tokens interleave, none is lost or garbled.
    assert sorted(tokens_by_step(events)[("qa.predict", "answer")]) == sorted(ANSWER * 3)
    fake_lm.reset()
    agent_script(fake_lm)
    invoked = httpx.post(f"{server.base_url}/parallel_qa/invoke", json={"inputs": INPUTS["parallel_qa"]})
    assert fake_lm.requests_started == 3
    prompt_tokens = sum(math.ceil(len(prompt_text(body)) / 4) for body in fake_lm.requests)
    assert invoked.json()["usage"]["openai/fake-model"]["prompt_tokens"] == prompt_tokens, (
        "every branch billed"
    )


def test_a_program_returning_a_bare_value_ends_its_stream(server: ServerThread) -> None:
    started = time.monotonic()
    events = stream(server, "shout", INPUTS["shout"])
    assert events[-1][0] == "prediction", events[-1]
    assert events[-1][1]["outputs"]["answer"].isupper()  # the bare value fills the declared output
    assert time.monotonic() - started < 10  # the deadline is 10 s: it must not be waited out


# --- 8. Audio inputs ---------------------------------------------------------------------------


def test_audio_inputs_reach_the_lm_through_the_litellm_fallback(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    response = httpx.post(
        f"{server.base_url}/transcribe/invoke", json={"inputs": INPUTS["transcribe"]}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == {"transcript": "hello"}
    assert response.json()["usage"]["openai/fake-model"]["completion_tokens"] > 0
    parts = [
        p for m in fake_lm.last_request["messages"] if isinstance(m["content"], list) for p in m["content"]
    ]
    assert {"type": "input_audio", "input_audio": {"data": CLIP["data"], "format": "wav"}} in parts
    metrics = samples(httpx.get(server.base_url + "/metrics").text)
    assert metrics[("dspy_serve_lm_calls_total", (("model", "openai/fake-model"),))] == 1


def test_audio_inputs_are_retried_and_allow_listed_like_any_call(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.push(fakes.ServerError(503))
    settings = fake_settings(fake_lm, programs=[f"transcribe={PROGRAMS}:transcribe"], lm_retries=1)
    with serving(create_app(settings)) as server:
        ok = httpx.post(
            f"{server.base_url}/transcribe/invoke", json={"inputs": INPUTS["transcribe"]}, timeout=30
        )
        refused = httpx.post(
            f"{server.base_url}/transcribe/invoke",
            json={"inputs": INPUTS["transcribe"], "options": {"model": "openai/gpt-4o"}},
            timeout=30,
        )
    assert ok.status_code == 200, ok.text
    assert fake_lm.requests_started == 2, "the 503 was retried"
    assert refused.status_code == 403


# --- 10. Refine's feedback sees the trajectory ------------------------------------------------


def test_refine_feedback_sees_the_attempts_trajectory(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.answers = {"answer": "Paris is big", "reasoning": "Known.", "advice": {}}
    response = httpx.post(f"{server.base_url}/refine/invoke", json={"inputs": INPUTS["refine"]}, timeout=30)
    assert response.status_code == 200, response.text
    feedback = [prompt_text(body) for body in fake_lm.requests if "program_trajectory" in prompt_text(body)]
    assert len(feedback) == 2
    section = feedback[0].split("[[ ## program_trajectory ## ]]")[-1].split("[[ ## ")[0]  # the user turn
    trajectory = json.loads(section)
    assert [step["module_name"] for step in trajectory] == ["predict"]  # named within the attempt's copy
    assert trajectory[0]["outputs"]["answer"] == "Paris is big"


# --- 13. a sync program's in-flight LM request closes with its request ------------------------


@pytest.mark.parametrize(("name", "lm_calls"), [("sync_rag", 1), ("parallel_qa", 3)])
def test_a_sync_programs_lm_requests_close_when_the_client_leaves(
    fake_lm: FakeLM, provider_key: str, name: str, lm_calls: int
) -> None:
    fake_lm.when("Capital", Hang())
    app = create_app(fake_settings(fake_lm, programs=[f"{name}={PROGRAMS}:{name}"]))
    with serving(app) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/{name}/invoke", json={"inputs": INPUTS[name]}, timeout=1.0)
        assert fake_lm.requests_started == lm_calls
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == lm_calls, timeout=0.5)


def test_a_sync_programs_lm_request_closes_at_the_deadline(
    fake_lm: FakeLM, provider_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The LM call starts 0.6 s into the 1 s deadline: its own HTTP timeout (1 s) would end it
    # 0.6 s after the deadline; the deadline itself must close it.
    monkeypatch.setattr(agent_programs, "RETRIEVE_SECONDS", 0.6)
    fake_lm.when("Capital", Hang())
    app = create_app(fake_settings(fake_lm, programs=[f"rag={PROGRAMS}:sync_rag"], timeout=1.0))
    with serving(app) as server:
        response = httpx.post(
            f"{server.base_url}/rag/invoke", json={"inputs": INPUTS["sync_rag"]}, timeout=30
        )
        assert response.status_code == 504
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=0.5)
        events = stream(server, "rag", INPUTS["sync_rag"])
        assert events[-1][0] == "error" and events[-1][1]["status"] == 504
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 2, timeout=0.5)
