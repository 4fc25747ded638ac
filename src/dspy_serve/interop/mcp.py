"""MCP: every served program as a tool, for agents, over Streamable HTTP and over stdio.

A tool is a program: its name, its instructions as the description, and its input and output
models as JSON schemas, so an agent sees the same typed contract as ``/docs``. A call takes the
one path every HTTP call takes (a :class:`~dspy_serve.serving.call.Call`: admission, allow-list,
deadline, span, output validation, the published record), behind the same API keys, per-key
program restrictions and rate limits. Failures are tool results with ``isError`` and the
problem+json body, so the model can read and correct them; never a stack trace.

HTTP runs in stateless mode: every POST is served on its own, with no session to pin to a
replica, so ``/mcp`` scales out like the rest of the API. The SDK's session manager owns a task
group that must run for the app's lifetime, hence :meth:`McpEndpoint.run` in the lifespan.

Every answer is one JSON body, never an SSE stream. The SDK writes its streams with
sse-starlette, which patches ``uvicorn.Server.handle_exit`` to set a process-wide flag (never
reset) that ends every such stream within half a second: SIGTERM would drop the tool calls in
flight whatever ``shutdown_grace`` says, and once any server in the process has stopped, every
later one would end its answers before writing them. A stateless endpoint sends nothing but the
one result anyway. For the same reason only POST is served: GET would open a stream that carries
nothing and is held forever, and there is no session for DELETE to end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dspy_serve._version import VERSION
from dspy_serve.errors import (
    HTTPProblem,
    ProgramNotFound,
    ServeError,
    ServiceUnavailable,
    UnsupportedMediaType,
    from_exception,
)
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import CallOptions, Service
from dspy_serve.web.connection import require_json
from dspy_serve.web.problems import send_problem
from dspy_serve.web.request_state import caller_of

__all__ = [
    "CALL_META",
    "PROBLEM_META",
    "McpEndpoint",
    "build_server",
    "error_result",
    "run_stdio",
    "serve_stdio",
]

logger = logging.getLogger("dspy_serve.mcp")

# The result _meta of a successful call: {"call_id", "version", "model", "usage", "cost"}.
CALL_META = "dspy-serve/call"
PROBLEM_META = "dspy-serve/problem"  # result _meta of an isError result: the problem+json body

Context = ServerRequestContext[Any, Any]

_NO_OPTIONS = CallOptions()  # a tool call takes the program's inputs only


def build_server(service: Service) -> Server[Any]:
    """The MCP server (transport-agnostic): one tool per program of ``service``."""

    async def list_tools(ctx: Context, params: PaginatedRequestParams | None) -> ListToolsResult:
        caller = _caller(ctx)
        tools = [_tool(p) for p in service.programs.values() if caller.may_call(p.name)]
        # The list depends on the caller's key: never let a shared cache hand it to another.
        return ListToolsResult(tools=tools, cache_scope="private")

    async def call_tool(ctx: Context, params: CallToolRequestParams) -> CallToolResult:
        caller = _caller(ctx)
        try:
            # First, before the arguments are looked at: a tool outside the caller's key is an
            # unknown tool, the spec's protocol error rather than a tool result.
            program = service.find(caller, params.name)
        except ProgramNotFound as exc:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {exc.detail}") from None
        try:
            inputs = program.interface.validate_inputs(
                params.arguments or {},
                "The arguments do not match the tool's input schema.",
                at=["arguments"],
            )
            call = service.call(caller, program, inputs, _NO_OPTIONS, wire="mcp")
            await call.admit()
            result = await call.result()
        except Exception as exc:  # each becomes a typed tool error; cancellation passes through
            return error_result(caller, from_exception(exc))
        finally:
            if not isinstance(ctx.request, Request):  # stdio: no HTTP middleware counts errors
                service.metrics.count_errors(caller.error_codes)
        body = {
            "call_id": call.call_id,
            "version": call.version.name,
            "model": result.model,
            "usage": result.usage,
            "cost": result.cost,
        }
        return CallToolResult(
            content=[TextContent(text=json.dumps(result.outputs, ensure_ascii=False))],
            structured_content=result.outputs,
            _meta={CALL_META: body},
        )

    return Server(
        "dspy-serve",
        version=VERSION,
        instructions="Each tool runs a DSPy program; arguments and results follow its JSON schemas.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


class McpEndpoint:
    """Streamable HTTP for one service, as an ASGI app: route it at ``/mcp`` and enter ``run()``
    in the app's lifespan (after ``service.start()``, so calls in flight end before it stops).

    It drains like every other endpoint: once the service stops being ready (SIGTERM) new
    requests get 503, while calls in flight are plain requests that uvicorn lets finish within
    ``shutdown_grace`` and then cancels.

    ``transport_security`` turns on the SDK's Host/Origin checks against DNS rebinding (off by
    default: behind a proxy the Host header is the public name, which only the operator knows).
    """

    def __init__(
        self, service: Service, *, transport_security: TransportSecuritySettings | None = None
    ) -> None:
        self.server = build_server(service)
        self._service = service
        self._manager = StreamableHTTPSessionManager(
            app=self.server,
            stateless=True,
            json_response=True,  # no sse-starlette stream: see the module docstring
            security_settings=transport_security,
            max_request_body_size=service.settings.max_body_bytes,
        )
        self._running = False

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The session manager's task group, for the app's lifetime; once per endpoint."""
        async with self._manager.run():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    @property
    def asgi_app(self) -> ASGIApp:
        """This endpoint, typed as the ASGI app it is (a Starlette ``Route`` serves it as one)."""
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one POST of JSON; 405 for any other method, 415 for another body type (the SDK
        says 400 in plain text), 503 outside :meth:`run` or while the service is not ready
        (starting or draining), rather than the SDK's crash or a stream."""
        if scope["method"] != "POST":
            await send_problem(scope, send, HTTPProblem(405, "Method Not Allowed"), {"Allow": "POST"})
            return
        if not (self._running and self._service.ready):
            await send_problem(scope, send, ServiceUnavailable("The service is not ready.", retry_after=1))
            return
        try:
            require_json(HTTPConnection(scope))
        except UnsupportedMediaType as exc:
            await send_problem(scope, send, exc)
            return
        await self._manager.handle_request(scope, receive, send)


async def serve_stdio(service: Service) -> None:
    """Serve the tools over stdin/stdout until stdin closes, owning the service's lifecycle.

    Stdout is the protocol: the SDK points fd 1 at stderr while serving, and ``sys.stdout`` is
    swapped for ``sys.stderr`` too, so what a program, DSPy or LiteLLM prints (even text left in
    a buffer, flushed later) never lands in the stream. The service starts only after that.
    """
    server = build_server(service)
    async with stdio_server() as (read_stream, write_stream):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                await service.start()
                try:
                    await server.run(read_stream, write_stream, server.create_initialization_options())
                finally:
                    with anyio.CancelScope(shield=True):
                        await service.stop()
        finally:
            sys.stdout.flush()  # while fd 1 still points at stderr


def run_stdio(service: Service) -> None:
    """Blocking :func:`serve_stdio`, for the ``dspy-serve mcp`` command (configure logging first:
    it must go to stderr)."""
    anyio.run(serve_stdio, service)


def error_result(caller: Caller, error: ServeError) -> CallToolResult:
    """The one rendering of an error on this wire: a tool result with ``isError`` and the
    problem+json body, which the model can read. Noted on the caller (once per error)."""
    caller.report(error)
    problem = error.problem(request_id=caller.request_id)
    return CallToolResult(
        content=[TextContent(text=json.dumps(problem, ensure_ascii=False))],
        is_error=True,
        _meta={PROBLEM_META: problem},
    )


def _tool(program: Program) -> Tool:
    interface = program.interface
    return Tool(
        name=program.name,
        description=interface.instructions or f"Run the DSPy program `{program.name}`.",
        input_schema=interface.input_schema(),
        output_schema=interface.output_schema(),
    )


def _caller(ctx: Context) -> Caller:
    """The HTTP request's caller (key, budget, request id), or a fresh one per stdio call."""
    request = ctx.request if isinstance(ctx.request, Request) else None
    return caller_of(request) if request is not None else Caller(address="stdio")
