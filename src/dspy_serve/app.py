"""Build the ASGI app: ``create_app`` for a whole server, ``router`` to mount into your own."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import dspy
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Route

from dspy_serve._version import VERSION
from dspy_serve.interop.openai import build_openai_router
from dspy_serve.redaction import remember_secrets
from dspy_serve.serving.keys import KeyRing, admin_ring
from dspy_serve.serving.programs import ProgramsArg
from dspy_serve.serving.secrets import secrets_of
from dspy_serve.serving.service import Service
from dspy_serve.settings import ServeSettings
from dspy_serve.web.access_log import AccessLogMiddleware
from dspy_serve.web.auth import ApiKeyMiddleware
from dspy_serve.web.discovery import build_router
from dspy_serve.web.middleware import BodyLimitMiddleware, RequestIdMiddleware
from dspy_serve.web.openapi import add_openapi_route, document_event_streams, document_security
from dspy_serve.web.pages import add_pages
from dspy_serve.web.playground import add_playground
from dspy_serve.web.problems import install_error_handlers

if TYPE_CHECKING:
    from dspy_serve.data.capture import Capture
    from dspy_serve.interop.mcp import McpEndpoint
    from dspy_serve.jobs import JobRunner

__all__ = ["create_app", "install_error_handlers", "router"]

logger = logging.getLogger("dspy_serve")


def create_app(
    settings: ServeSettings | None = None,
    *,
    programs: ProgramsArg | None = None,
    lm: dspy.BaseLM | None = None,
    echo_request_id: bool = True,
) -> FastAPI:
    """A FastAPI app serving ``programs`` (objects) and ``settings.programs`` (TARGETs).

    ``lm`` replaces the default LM built from ``settings.model`` with your own instance.
    ``echo_request_id=False`` leaves the ``X-Request-ID`` response header to a proxy in front
    that already sets it (Ray Serve's).
    """
    settings = settings or ServeSettings()
    remember_secrets(secrets_of(settings))  # never in a log line or an error body (logs.py)
    service = Service(settings, programs, lm)
    # An LM given here, or one a program file configured as it was loaded, may carry its key.
    remember_secrets(secrets_of(settings, lms=[lm, dspy.settings.lm]))
    mcp = _mcp_endpoint(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        # Said when the server starts serving (not when the app is built), next to what it serves.
        if keys is not None:
            logger.info("API keys: on (%d keys)", len(keys))
        else:
            logger.warning("API keys: off (every route is open; set DSPY_SERVE_API_KEYS or api_keys_file)")
        try:
            # MCP's task group ends (cancelling any tool call still running) before the service stops.
            async with AsyncExitStack() as stack:
                if mcp is not None:
                    await stack.enter_async_context(_in_own_task(mcp.run))
                if capture is not None:  # captured calls and feedback (#26)
                    from dspy_serve.web.feedback_routes import running

                    await stack.enter_async_context(running(capture))
                if jobs is not None:  # durable jobs (#28)
                    from dspy_serve.web.job_routes import running_jobs

                    await stack.enter_async_context(running_jobs(jobs))
                stack.enter_context(_reload_on_sighup(service))
                if admin_keys is not None:  # the automatic rollout policy (#27)
                    from dspy_serve.compare.autopilot import running_autopilot

                    await stack.enter_async_context(running_autopilot(service))
                yield
        finally:
            await service.stop()

    app = FastAPI(
        title=settings.title,
        version=VERSION,
        description="DSPy programs served by dspy-serve. Errors are RFC 9457 problem+json.\n\n"
        "Not listed here, over the same programs, keys and limits: the OpenAI-compatible "
        "`POST /v1/chat/completions` and `GET /v1/models` (dspy-serve's docs/openai.md), and the MCP "
        "endpoint `/mcp` (docs/mcp.md; with the `mcp` extra).",
        lifespan=lifespan,
        # /openapi.json depends on the caller's key (add_openapi_route); /docs and /redoc load
        # their assets from the package, not from a CDN (add_pages).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request
        # (three environment reads, ~0.02 ms); tracing is dspy-serve's `otel` setting, off by default.
        telemetry=None if settings.otel else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    add_pages(app, service)
    if settings.playground:
        add_playground(app)
    app.include_router(build_router(service))
    app.include_router(build_openai_router(service))
    # The store, the data loop and jobs (SQLAlchemy, Alembic: ~0.2 s and ~25 MB) load only when
    # the server uses them.
    capture: Capture | None = None
    jobs: JobRunner | None = None
    open_paths: frozenset[str] = frozenset()
    if service.settings.capture:
        from dspy_serve.web.feedback_routes import add_feedback, feedback_paths

        capture = add_feedback(app, service)
        open_paths = feedback_paths(service)
    if service.settings.jobs:
        from dspy_serve.web.job_routes import add_jobs

        jobs = add_jobs(app, service)
    admin_keys = admin_ring(settings)
    if admin_keys is not None:  # versions and rollouts at run time (#27)
        from dspy_serve.web.admin_routes import add_admin

        add_admin(app, service, admin_keys)
    if mcp is not None:
        # A Route, not a mount: a mount only matches "/mcp/", so every POST would be redirected.
        app.router.routes.append(Route("/mcp", mcp.asgi_app, name="mcp", include_in_schema=False))
    document_event_streams(app)
    add_openapi_route(app, list(service.programs))
    install_error_handlers(app)
    # Added innermost first: request ids wrap everything, CORS answers preflights before auth.
    keys = KeyRing.from_settings(settings)
    if keys is not None:
        document_security(app, protect_docs=settings.protect_docs)
        app.add_middleware(
            ApiKeyMiddleware,
            keys=keys,
            protect_docs=settings.protect_docs,
            open_pages=settings.playground,
            open_paths=open_paths,
            open_prefix="/admin/" if admin_keys is not None else None,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "X-Feedback-Token"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "X-Cache",
                "X-Coalesced",
                "X-Call-Id",
                "X-Feedback-Token",
                "Location",
                "X-Next-Offset",
                "X-More-Results",
                "X-Job-State",
            ],
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        job_max_bytes=settings.job_max_body_bytes if jobs is not None else None,
    )
    app.add_middleware(AccessLogMiddleware, metrics=service.metrics, programs=frozenset(service.programs))
    app.add_middleware(RequestIdMiddleware, echo=echo_request_id)
    if settings.otel:
        _instrument(app)
    return app


def router(
    settings: ServeSettings | None = None,
    *,
    programs: ProgramsArg | None = None,
    lm: dspy.BaseLM | None = None,
) -> APIRouter:
    """The programs' routes (and, with capture on, capture and ``POST /NAME/feedback``) as an
    ``APIRouter`` with its own lifespan, to include in an existing app.

    Call :func:`install_error_handlers` on that app too, for problem+json errors. What needs
    the whole app (API keys, jobs, the admin API, feedback tokens: middleware and their own
    routes) is refused with a message: mount :func:`create_app` instead.
    """
    settings = settings or ServeSettings()
    needs_app = {
        "API keys": KeyRing.from_settings(settings) is not None,
        "jobs": settings.jobs,
        "the admin API": admin_ring(settings) is not None,
        "feedback tokens": settings.feedback_token_secret is not None,
    }
    if wanted := [name for name, on in needs_app.items() if on]:
        raise ValueError(
            f"router() cannot serve {', '.join(wanted)} (they need the whole app): "
            "mount the app instead, app.mount('/prefix', create_app(settings))"
        )
    service = Service(settings, programs, lm)
    api = build_router(service)
    capture: Capture | None = None
    if settings.capture:  # captured calls and their feedback route, as create_app serves them (#26)
        from dspy_serve.web.feedback_routes import capture_routes

        capture, feedback = capture_routes(service)
        api.include_router(feedback)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await service.start()
        try:
            async with AsyncExitStack() as stack:
                if capture is not None:
                    from dspy_serve.web.feedback_routes import running

                    await stack.enter_async_context(running(capture))
                yield
        finally:
            await service.stop()

    api.lifespan_context = lifespan
    return api


@contextmanager
def _reload_on_sighup(service: Service) -> Iterator[None]:
    """SIGHUP loads the configured versions' files again (#27), without a restart. Only where
    the process can take signals: in its main thread (a server in a test thread cannot)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    async def reload() -> None:
        try:
            await service.versions.reload()
        except Exception as exc:  # a failed reload leaves everything serving as before
            logger.error("SIGHUP: the configuration was not reloaded, serving as before: %s", exc)

    def on_sighup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        yield  # not the main thread, or no SIGHUP on this platform
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _instrument(app: FastAPI) -> None:
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError as exc:
        raise RuntimeError("otel needs OpenTelemetry: pip install 'dspy-serve[otel]'") from exc
    FastAPIInstrumentor.instrument_app(app, excluded_urls="health/live,health/ready,metrics")


@asynccontextmanager
async def _in_own_task(context: Callable[[], AbstractAsyncContextManager[Any]]) -> AsyncIterator[None]:
    """Hold ``context`` open in a task of its own: its task group is entered and left in that
    task, even when the lifespan is driven from two (as test fixtures do)."""
    entered, leave = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with context():
            entered.set()
            await leave.wait()

    task = asyncio.create_task(hold())
    waiting = asyncio.create_task(entered.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiting.cancel()
        task.result()  # it failed to start: raise why
    try:
        yield
    finally:
        leave.set()
        await task


def _mcp_endpoint(service: Service) -> McpEndpoint | None:
    """MCP tools at /mcp when the optional SDK is installed (``pip install 'dspy-serve[mcp]'``)."""
    if importlib.util.find_spec("mcp") is None:
        return None
    from dspy_serve.interop.mcp import McpEndpoint

    return McpEndpoint(service)
