"""MCP through the SDK's own client: tools over Streamable HTTP on a real loopback server, and
over stdio from a subprocess, as a desktop agent runs it."""

from __future__ import annotations

import json
import logging
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from fastapi import FastAPI
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent

from dspy_serve import create_app
from dspy_serve.errors import HTTPProblem, ProxyError, ServeError
from dspy_serve.interop.mcp import CALL_META, PROBLEM_META, McpEndpoint, error_result
from dspy_serve.serving.caller import Caller
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
KITCHEN = f"kitchen={PROGRAMS / 'serving.py'}:kitchen"
MODES = ["auto", "legacy"]  # auto: 2026-07-28 per-request wire; legacy: initialize handshake


def with_mcp(app: FastAPI) -> FastAPI:
    """create_app wires the endpoint itself (routed at /mcp, run inside the lifespan) whenever
    the SDK is installed: check that it did."""
    assert any(getattr(route, "path", None) == "/mcp" for route in app.router.routes)
    return app


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    fake_lm.answers = {"answer": "Paris"}
    with serving(with_mcp(create_app(fake_settings(fake_lm, programs=[QA, KITCHEN])))) as running:
        yield running


def mcp_client(server: ServerThread, mode: str = "auto", key: str | None = None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    return Client(streamable_http_client(f"{server.base_url}/mcp", http_client=http), mode=mode)


def problem_of(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error
    assert isinstance(result.content[0], TextContent)
    problem = json.loads(result.content[0].text)
    assert result.meta is not None and result.meta[PROBLEM_META] == problem
    assert "Traceback" not in result.content[0].text
    return dict(problem)


def leaves(error: BaseException) -> list[BaseException]:
    nested = getattr(error, "exceptions", None)
    return [leaf for inner in nested for leaf in leaves(inner)] if nested else [error]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_the_programs_with_their_schemas(server: ServerThread, mode: str) -> None:
    async with mcp_client(server, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    async with httpx.AsyncClient() as http:
        described = {p["name"]: p for p in (await http.get(f"{server.base_url}/programs")).json()}
    assert set(tools) == {"qa", "kitchen"}
    assert tools["qa"].description == "Answer the question in a few words."
    for name, tool in tools.items():
        assert tool.input_schema == described[name]["input_schema"]
        assert tool.output_schema == described[name]["output_schema"]
    assert tools["qa"].input_schema["required"] == ["question"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_returns_structured_outputs_and_their_json(
    server: ServerThread, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dspy_serve.access")
    async with mcp_client(server, mode) as client:
        result = await client.call_tool("qa", {"question": "Capital of France?"})
        kitchen = await client.call_tool("kitchen", {"text": "great", "tags": ["a"]})
    assert not result.is_error
    assert result.structured_content == {"answer": "Paris"}
    assert isinstance(result.content[0], TextContent)
    assert json.loads(result.content[0].text) == {"answer": "Paris"}
    assert result.meta is not None
    call = result.meta[CALL_META]
    assert call["model"] == "openai/fake-model"
    assert call["usage"]["openai/fake-model"]["total_tokens"] > 0
    # The access log line of the POST carries the call's tokens, as for /invoke.
    posts = [r for r in caplog.records if r.name == "dspy_serve.access" and r.getMessage() == "POST /mcp 200"]
    assert any((getattr(r, "tokens", None) or 0) > 0 for r in posts)
    # Typed outputs (the client checked them against the tool's output schema).
    assert not kitchen.is_error and set(kitchen.structured_content) == {
        "label",
        "score",
        "count",
        "flag",
        "person",
    }


@pytest.mark.parametrize("mode", MODES)
async def test_an_lm_failure_is_a_typed_tool_error(server: ServerThread, fake_lm: FakeLM, mode: str) -> None:
    fake_lm.when("broken", ServerError(500))
    async with mcp_client(server, mode) as client:
        result = await client.call_tool("qa", {"question": "broken"})
    problem = problem_of(result)
    assert problem["code"] == "upstream_error" and problem["status"] == 502
    assert result.structured_content is None
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{server.base_url}/metrics")).text
    assert 'dspy_serve_errors_total{code="upstream_error"} 1.0' in metrics


async def test_invalid_arguments_are_a_typed_tool_error(server: ServerThread, fake_lm: FakeLM) -> None:
    async with mcp_client(server) as client:
        missing = await client.call_tool("qa", {})
        wrong = await client.call_tool("kitchen", {"text": "t", "tags": "not-a-list"})
        unknown_field = await client.call_tool("qa", {"question": "q", "temperature": 2})
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("nope", {"question": "q"})
    assert problem_of(missing)["code"] == "invalid_input"
    assert problem_of(missing)["errors"][0]["loc"] == ["arguments", "question"]
    assert problem_of(wrong)["errors"][0]["loc"] == ["arguments", "tags"]
    assert problem_of(unknown_field)["errors"][0]["loc"] == ["arguments", "temperature"]
    assert unknown.value.code == INVALID_PARAMS
    assert fake_lm.requests_started == 0  # nothing invalid reached the LM


def test_the_endpoint_answers_at_mcp_without_a_redirect(server: ServerThread) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = httpx.post(
        f"{server.base_url}/mcp",
        json=listing,
        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
    )
    assert response.status_code == 200, response.text
    assert "qa" in response.text


@pytest.mark.parametrize("mode", MODES)
async def test_a_server_stopped_by_a_signal_leaves_the_next_one_serving(
    fake_lm: FakeLM, provider_key: str, mode: str
) -> None:
    """An exit signal to one uvicorn server in the process (a test's, a worker's) must not end
    MCP answers of every later server: sse-starlette turns a process-wide flag on for good then."""
    stopped = ServerThread(with_mcp(create_app(fake_settings(fake_lm, programs=[QA])))).start()
    stopped.server.handle_exit(signal.SIGTERM, None)
    stopped.stop()
    fake_lm.answers = {"answer": "Paris"}
    with serving(with_mcp(create_app(fake_settings(fake_lm, programs=[QA])))) as server:
        async with mcp_client(server, mode) as client:
            tools = (await client.list_tools()).tools
            result = await client.call_tool("qa", {"question": "Capital of France?"})
    assert [tool.name for tool in tools] == ["qa"]
    assert result.structured_content == {"answer": "Paris"}


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_only_post_is_served_so_no_stream_is_held_open(server: ServerThread, method: str) -> None:
    """Stateless: no session to resume or end, no server-to-client stream worth holding open."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.request(
            method,
            f"{server.base_url}/mcp",
            headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
        )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "http_error"


async def test_outside_its_run_context_the_endpoint_answers_503(fake_lm: FakeLM, provider_key: str) -> None:
    endpoint = McpEndpoint(create_app(fake_settings(fake_lm, programs=[QA])).state.service)
    transport = httpx.ASGITransport(app=endpoint.asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"


async def test_api_keys_guard_the_endpoint_and_restrict_its_tools(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": "Paris"}
    settings = fake_settings(fake_lm, programs=[QA, KITCHEN], api_keys=["k", "narrow:k2 programs=qa"])
    with serving(with_mcp(create_app(settings))) as server:
        async with httpx.AsyncClient() as http:
            refused = await http.post(
                f"{server.base_url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
            )
        # The SDK raises the 401 as an MCPError inside exception groups (its task groups).
        with pytest.raises(Exception) as keyless:
            async with mcp_client(server) as client:
                await client.list_tools()
        async with mcp_client(server, key="k") as client:
            everything = {tool.name for tool in (await client.list_tools()).tools}
            answer = await client.call_tool("qa", {"question": "Capital?"})
        async with mcp_client(server, key="k2") as narrow:
            allowed = {tool.name for tool in (await narrow.list_tools()).tools}
            # A tool outside the key is an unknown tool, whatever the arguments (#22).
            errors = []
            tries = (("kitchen", {}), ("kitchen", {"text": "t", "tags": []}), ("nope", {}))
            for name, arguments in tries:
                with pytest.raises(MCPError) as unknown:
                    await narrow.call_tool(name, arguments)
                errors.append((unknown.value.code, str(unknown.value).replace(name, "NAME")))
    assert refused.status_code == 401
    assert any(isinstance(error, MCPError) for error in leaves(keyless.value))
    assert refused.json()["code"] == "unauthorized"
    assert everything == {"qa", "kitchen"} and answer.structured_content == {"answer": "Paris"}
    assert allowed == {"qa"}
    assert errors[0] == errors[1] == errors[2] and errors[0][0] == INVALID_PARAMS
    assert "it serves: qa" in errors[0][1] and "kitchen" not in errors[0][1]


async def test_rate_limits_count_tool_calls(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": "Paris"}
    settings = fake_settings(fake_lm, programs=[QA], rate_limit="1/minute")
    with serving(with_mcp(create_app(settings))) as server:
        async with mcp_client(server) as client:
            first = await client.call_tool("qa", {"question": "q1"})
            second = await client.call_tool("qa", {"question": "q2"})
    assert not first.is_error
    assert problem_of(second)["code"] == "rate_limited"
    assert fake_lm.requests_started == 1


STDIO_SERVER = """
import contextlib, sys
from dspy_serve.logs import configure_logging
from dspy_serve.interop.mcp import run_stdio
from dspy_serve.serving.service import Service
from dspy_serve.settings import ServeSettings

settings = ServeSettings(programs=sys.argv[1:2], model="openai/fake-model", api_base=sys.argv[2],
                         lm_retries=0, timeout=10)
configure_logging("info", "json")
with contextlib.redirect_stdout(sys.stderr):  # importing the program may print
    service = Service(settings)
run_stdio(service)
"""

NOISY_PROGRAM = '''
import dspy

print("noise while importing")


class Noisy(dspy.Module):
    """Answer, chattily."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        print("noise while running")
        return self.answer(question=question)


noisy = Noisy()
'''


async def test_stdio_serves_the_same_tools(
    fake_lm: FakeLM, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    (tmp_path / "noisy.py").write_text(textwrap.dedent(NOISY_PROGRAM))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", STDIO_SERVER, f"{tmp_path / 'noisy.py'}:noisy", fake_lm.base_url],
        env={"OPENAI_API_KEY": "sk-fake", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        cwd=tmp_path,
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            tools = (await client.list_tools()).tools
            result = await client.call_tool("noisy", {"question": "Capital of France?"})
            invalid = await client.call_tool("noisy", {"question": [3]})
    stderr = (tmp_path / "stderr.log").read_text()
    assert [tool.name for tool in tools] == ["noisy"]
    assert tools[0].description == "Answer, chattily."
    assert result.structured_content == {"answer": "Paris"}
    assert problem_of(invalid)["code"] == "invalid_input"
    # What the program printed went to stderr, never into the protocol on stdout.
    assert "noise while importing" in stderr and "noise while running" in stderr
    assert not [r for r in caplog.records if r.name == "mcp.client.stdio" and r.levelno >= logging.ERROR]


def _every_error() -> list[ServeError]:
    def subclasses(cls: type[ServeError]) -> list[type[ServeError]]:
        return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]

    return [
        cls(404, "gone") if cls in (HTTPProblem, ProxyError) else cls("what went wrong")  # type: ignore[call-arg]
        for cls in [ServeError, *subclasses(ServeError)]
    ]


@pytest.mark.parametrize("error", _every_error(), ids=lambda error: type(error).__name__)
def test_every_error_renders_as_one_tool_error(error: ServeError) -> None:
    caller = Caller("stdio", request_id="r")
    result = error_result(caller, error)
    error_result(caller, error)
    problem = problem_of(result)
    assert (problem["status"], problem["code"], problem["request_id"]) == (error.status, error.code, "r")
    assert caller.error_codes == [error.code], "counted once"
