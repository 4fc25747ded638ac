"""OpenTelemetry: a server span per request, and a program span inside it."""

from __future__ import annotations

import httpx
import pytest
from dspy.utils import DummyLM

from dspy_serve import ServeSettings, create_app

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process, as OpenTelemetry allows


async def test_requests_and_program_calls_are_traced() -> None:
    EXPORTER.clear()
    app = create_app(
        ServeSettings(otel=True), programs={"qa": "question -> answer"}, lm=DummyLM([{"answer": "x"}])
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        assert (await http.post("/qa/invoke", json={"inputs": {"question": "q"}})).status_code == 200
    spans = EXPORTER.get_finished_spans()
    program = next(span for span in spans if span.name == "dspy_serve.call qa")
    server = next(span for span in spans if span.kind == trace.SpanKind.SERVER)
    assert server.attributes["http.route"] == "/qa/invoke"
    assert program.attributes["dspy_serve.program"] == "qa"
    assert program.parent is not None and program.parent.span_id == server.context.span_id


async def test_without_otel_no_request_is_traced() -> None:
    """Even with a TracerProvider configured in the process: ``otel`` is the switch."""
    EXPORTER.clear()
    app = create_app(ServeSettings(), programs={"qa": "question -> answer"}, lm=DummyLM([{"answer": "x"}]))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        assert (await http.post("/qa/invoke", json={"inputs": {"question": "q"}})).status_code == 200
    assert EXPORTER.get_finished_spans() == ()


async def test_every_wire_traces_its_program_calls() -> None:
    """The span lives in the one call path: invoke, stream, each batch item, /v1 and MCP."""
    EXPORTER.clear()
    app = create_app(
        ServeSettings(otel=True), programs={"qa": "question -> answer"}, lm=DummyLM([{"answer": "x"}] * 10)
    )
    ask = {"question": "q"}
    chat = {"model": "qa", "messages": [{"role": "user", "content": "q"}]}
    tool = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "qa", "arguments": ask}}
    mcp_headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        for path, body in [
            ("/qa/invoke", {"inputs": ask}),
            ("/qa/stream", {"inputs": ask}),
            ("/qa/batch", {"items": [ask, {"question": "another"}]}),
            ("/v1/chat/completions", chat),
            ("/v1/chat/completions", {**chat, "stream": True}),
        ]:
            assert (await http.post(path, json=body)).status_code == 200, path
        assert (await http.post("/mcp", json=tool, headers=mcp_headers)).status_code == 200
    programs = [span for span in EXPORTER.get_finished_spans() if span.name == "dspy_serve.call qa"]
    assert len(programs) == 7
