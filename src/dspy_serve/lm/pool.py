"""LM engines whose connection pool the server sizes, not DSPy's default.

DSPy 3.4's native engine keeps at most 100 connections per LM (lm15's
``DEFAULT_MAX_CONNECTIONS``) and ``dspy.LM`` has no setting for it: at 256 concurrent calls of
a 1 s LM even the program called in-process tops out near 100 requests/s, whatever the server
does. Here the same DSPy engines (``LM15Engine``/``AsyncLM15Engine``) are built with a pool
sized from the server's in-flight limit and handed to ``dspy.LM`` as its engine, declaring the
capabilities DSPy would have found for the model itself, so adapters behave the same.

Models the native engine does not route (LiteLLM-only providers) keep DSPy's default engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy

__all__ = ["pooled_engines"]


class _Declared:
    """Capability hints DSPy reads from a custom engine (dspy.clients.capabilities)."""

    def __init__(self, inner: Any, capabilities: Any) -> None:
        self._inner = inner
        self.supports_function_calling = capabilities.function_calling
        self.supports_reasoning = capabilities.reasoning
        self.supports_response_schema = capabilities.response_schema
        self.supported_params = capabilities.params


class PooledEngine(_Declared):
    def complete(self, request: Any) -> Any:
        return self._inner.complete(request)

    def stream(self, request: Any) -> Iterator[Any]:
        return self._inner.stream(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._inner.close()


class AsyncPooledEngine(_Declared):
    async def complete(self, request: Any) -> Any:
        return await self._inner.complete(request)

    def stream(self, request: Any) -> AsyncIterator[Any]:
        return self._inner.stream(request)  # type: ignore[no-any-return]

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
        PooledEngine(LM15Engine(config, model_type="chat"), declared),
        AsyncPooledEngine(AsyncLM15Engine(config, model_type="chat"), declared),
    )
