"""One access-log line and one metrics observation per HTTP request.

The line carries the request id, program, status, latency, tokens, cost and API key *name*
(never a key, never a prompt), all read from the request's
:class:`~dspy_serve.serving.caller.Caller`. Its tokens and cost are the sum of the request's
published :class:`~dspy_serve.serving.observers.FinishedCall` records (one per call, a batch
has several), the same records the metrics count, so the two always agree.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspy_serve.serving.metrics import Metrics
from dspy_serve.web.request_state import caller_in

__all__ = ["AccessLogMiddleware"]

access_log = logging.getLogger("dspy_serve.access")

_ENDPOINTS = ("invoke", "batch", "stream")


class AccessLogMiddleware:
    """Count and time every request, labelled by program and endpoint (never by raw path),
    and write its one access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, programs: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.programs = programs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        program, endpoint = self._labels(scope["path"])
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        caller = caller_in(scope)
        try:
            await self.app(scope, receive, record_status)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(program, endpoint, status, elapsed, caller.error_codes)
            code = caller.error_codes[-1] if caller.error_codes else None  # what ended it
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": caller.request_id,
                    "program": program or None,
                    "endpoint": endpoint,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "tokens": caller.tokens,
                    "cost_usd": caller.cost_usd,
                    "key": caller.api_key.name if caller.api_key is not None else None,
                    "version": caller.version,  # the program version that answered (#27)
                    "error_code": code,
                },
            )

    def _labels(self, path: str) -> tuple[str, str]:
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] in self.programs and parts[1] in _ENDPOINTS:
            return parts[0], parts[1]
        if path.startswith("/v1/"):
            return "", "openai"
        known = ("programs", "health", "metrics", "docs", "openapi.json", "redoc", "mcp")
        return "", parts[0] if parts[0] in known else "other"
