"""Graceful shutdown, tested the way uvicorn tests its own: a real server, a slow request,
then the exit signal."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from dspy_serve import create_app
from dspy_serve.deploy.uvicorn_server import ServeServer
from tests.support.fake_lm import FakeLM, Hang
from tests.support.servers import ServerThread
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def start(app: Any, grace: float) -> ServerThread:
    service = app.state.service
    return ServerThread(app, grace=grace, make_server=lambda config: ServeServer(config, service)).start()


def invoke_in_background(url: str, results: list[httpx.Response | Exception]) -> threading.Thread:
    def call() -> None:
        try:
            results.append(httpx.post(url + "/qa/invoke", json={"inputs": {"question": "q"}}, timeout=30))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def call_tool_in_background(
    url: str, mode: str, results: list[CallToolResult | Exception]
) -> threading.Thread:
    async def call() -> CallToolResult:
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode) as client:
            # Listed first: the client checks results against the tool's output schema, and would
            # otherwise list the tools after the call, on a connection the draining server refuses.
            await client.list_tools()
            return await client.call_tool("qa", {"question": "q"})

    def run() -> None:
        try:
            results.append(asyncio.run(call()))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_in_flight_requests_finish_and_new_ones_are_refused(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 1.5
    app = create_app(fake_settings(fake_lm, programs=[QA]))
    server = start(app, grace=10)
    results: list[httpx.Response | Exception] = []
    slow = invoke_in_background(server.base_url, results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=5)

    server.server.handle_exit(signal.SIGTERM, None)
    try:
        late = httpx.get(server.base_url + "/health/ready", timeout=5)
        assert late.status_code == 503  # accepted before the listener closed: still refused
    except (httpx.ConnectError, httpx.ReadError):
        pass  # the listener is already closed, or closed the connection it had just accepted: refused
    slow.join(timeout=10)
    server.stop()

    assert isinstance(results[0], httpx.Response), results
    assert results[0].status_code == 200
    assert results[0].json()["outputs"]["answer"]


def test_work_past_the_grace_period_is_cancelled_and_its_lm_call_closed(
    fake_lm: FakeLM, provider_key: str
) -> None:
    fake_lm.when("q", Hang())
    app = create_app(fake_settings(fake_lm, programs=[QA], timeout=60))
    server = start(app, grace=1)
    results: list[httpx.Response | Exception] = []
    stuck = invoke_in_background(server.base_url, results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=5)

    started = time.monotonic()
    server.server.handle_exit(signal.SIGTERM, None)
    server.stop(timeout=10)
    stopped_after = time.monotonic() - started
    stuck.join(timeout=10)

    assert stopped_after < 5, "the grace period bounds shutdown"
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)
    assert app.state.service.state.value == "stopped"


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # the 2026-07-28 wire; the initialize handshake
def test_an_mcp_tool_call_in_flight_finishes_within_the_grace_period(
    fake_lm: FakeLM, provider_key: str, mode: str
) -> None:
    fake_lm.latency = 1.5
    app = create_app(fake_settings(fake_lm, programs=[QA]))
    server = start(app, grace=10)
    results: list[CallToolResult | Exception] = []
    slow = call_tool_in_background(server.base_url, mode, results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=10)

    server.server.handle_exit(signal.SIGTERM, None)
    slow.join(timeout=15)
    server.stop()

    assert isinstance(results[0], CallToolResult), results
    assert not results[0].is_error and results[0].structured_content
    assert fake_lm.requests_disconnected == 0


def test_a_draining_server_refuses_new_mcp_requests_with_503(fake_lm: FakeLM, provider_key: str) -> None:
    app = create_app(fake_settings(fake_lm, programs=[QA]))
    server = start(app, grace=1)
    app.state.service.begin_shutdown()  # what SIGTERM does first; the listener is still open here
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "qa", "arguments": {}}}
    response = httpx.post(
        server.base_url + "/mcp",
        json=call,
        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
    )
    server.stop()

    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert response.headers["retry-after"] == "1"
    assert fake_lm.requests_started == 0


def test_an_mcp_tool_call_past_the_grace_period_is_cancelled_and_its_lm_call_closed(
    fake_lm: FakeLM, provider_key: str
) -> None:
    fake_lm.when("q", Hang())
    app = create_app(fake_settings(fake_lm, programs=[QA], timeout=60))
    server = start(app, grace=1)
    results: list[CallToolResult | Exception] = []
    stuck = call_tool_in_background(server.base_url, "legacy", results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=10)

    started = time.monotonic()
    server.server.handle_exit(signal.SIGTERM, None)
    server.stop(timeout=10)
    stopped_after = time.monotonic() - started
    stuck.join(timeout=10)

    assert stopped_after < 5, "the grace period bounds shutdown"
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)
    assert results and not isinstance(results[0], CallToolResult), "the call was cut, not answered"
    assert app.state.service.state.value == "stopped"
