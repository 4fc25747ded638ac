"""LM engines whose connection pool the server sizes, not DSPy's default.

DSPy 3.4's native engine keeps at most 100 connections per LM (lm15's
``DEFAULT_MAX_CONNECTIONS``) and ``dspy.LM`` has no setting for it: at 256 concurrent calls of
a 1 s LM even the program called in-process tops out near 100 requests/s, whatever the server
does. Here the same DSPy engines (``LM15Engine``/``AsyncLM15Engine``) are built with a pool
sized from the server's in-flight limit and handed to ``dspy.LM`` as its engine, declaring the
capabilities DSPy would have found for the model itself, so adapters behave the same.

Models the native engine does not route (LiteLLM-only providers) keep DSPy's default engine.

Like DSPy's own ``engine="auto"``, a request the native route cannot carry (an audio part on
the Chat Completions wire) goes through LiteLLM instead, decided before any I/O: the engine
refuses it with :class:`NativeRouteRefused`, and ``ServingLM`` sends the same call through
DSPy's LiteLLM engine with the same endpoint, key, deadline-bound retries and metrics (LiteLLM
keeps its own connection pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy

__all__ = ["NativeRouteRefused", "pooled_engines"]


class NativeRouteRefused(Exception):
    """The native engine cannot carry this request; ``clients`` reach the same endpoint
    through DSPy's LiteLLM engine."""

    def __init__(self, reason: BaseException, clients: dict[str, Any]) -> None:
        super().__init__(str(reason))
        self.clients = clients


class _Declared:
    """Capability hints DSPy reads from a custom engine (dspy.clients.capabilities), and the
    choice between the native engine and the LiteLLM fallback."""

    def __init__(self, inner: Any, capabilities: Any, clients: dict[str, Any]) -> None:
        self._inner = inner
        self._clients = clients
        self.supports_function_calling = capabilities.function_calling
        self.supports_reasoning = capabilities.reasoning
        self.supports_response_schema = capabilities.response_schema
        self.supported_params = capabilities.params

    def _route(self, request: Any) -> Any:
        """The native engine, unless it would refuse the request's content (planned offline;
        only non-text content can be refused, so text-only requests skip the ~0.1 ms plan)."""
        from dspy.lm15 import TextPart, UnsupportedFeatureError

        if all(isinstance(part, TextPart) for message in request.messages for part in message.parts):
            return self._inner
        try:
            self._inner.plan(request)
        except UnsupportedFeatureError as exc:
            raise NativeRouteRefused(exc, self._clients) from exc
        return self._inner


class PooledEngine(_Declared):
    def complete(self, request: Any) -> Any:
        return self._route(request).complete(request)

    def stream(self, request: Any) -> Iterator[Any]:
        return self._route(request).stream(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._inner.close()


class AsyncPooledEngine(_Declared):
    async def complete(self, request: Any) -> Any:
        return await self._route(request).complete(request)

    def stream(self, request: Any) -> AsyncIterator[Any]:
        return self._route(request).stream(request)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._inner.aclose()


def pooled_engines(
    model: str, *, max_connections: int, api_base: str | None, timeout: float | None
) -> tuple[PooledEngine, AsyncPooledEngine] | None:
    """Engines for ``model`` with ``max_connections``, or None when DSPy would not route it natively."""
    from dspy.clients.backend_selection import select_backend
    from dspy.clients.capabilities import capabilities
    from dspy.clients.engines.lm15_engine import AsyncLM15Engine, LM15Engine, timeouts_for
    from dspy.lm15 import RouterConfig

    clients: dict[str, Any] = {"timeout": timeout}
    if api_base is not None:
        clients["api_base"] = api_base
    probe = dspy.LM(model, **clients)  # never called: it tells us how DSPy would route the model
    selection = select_backend(probe)
    resolution = selection.resolution
    if not selection.native or resolution is None or resolution.declared:
        return None
    provider = resolution.provider
    config = RouterConfig(
        base_urls={provider: api_base} if api_base else None,
        timeouts=timeouts_for(timeout),
        max_connections=max_connections,
    )
    declared = capabilities(probe)
    return (
        PooledEngine(LM15Engine(config, model_type="chat"), declared, clients),
        AsyncPooledEngine(AsyncLM15Engine(config, model_type="chat"), declared, clients),
    )
