"""LM engines whose connection pool the server sizes, not DSPy's default.

DSPy 3.4's native engine keeps at most 100 connections per LM (lm15's
``DEFAULT_MAX_CONNECTIONS``) and ``dspy.LM`` has no setting for it: at 256 concurrent calls of
a 1 s LM even the program called in-process tops out near 100 requests/s, whatever the server
does. Here the same DSPy engines (``LM15Engine``/``AsyncLM15Engine``) are built with a pool
sized from the server's in-flight limit and handed to ``dspy.LM`` as its engine, declaring the
capabilities DSPy would have found for the model itself, so adapters behave the same.

Models the native engine does not route (LiteLLM-only providers) keep DSPy's default engine.

Like DSPy's own ``engine="auto"``, a request the native route cannot carry goes through
LiteLLM instead, decided before any I/O: an audio part on the Chat Completions wire (the engine
refuses it with :class:`NativeRouteRefused`), or a call DSPy cannot even turn into the canonical
request a custom engine takes, such as a ``dspy.File`` with a filename
(:func:`refused_before_sending`). ``ServingLM`` then sends the same call through DSPy's LiteLLM
engine with the same endpoint, key, deadline-bound retries and metrics (LiteLLM keeps its own
connection pool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy

__all__ = ["NativeRouteRefused", "pooled_engines", "refused_before_sending"]


class NativeRouteRefused(Exception):
    """The native engine cannot carry this request; ``clients`` reach the same endpoint
    through DSPy's LiteLLM engine."""

    def __init__(self, reason: BaseException, clients: dict[str, Any]) -> None:
        super().__init__(str(reason))
        self.clients = clients


def refused_before_sending(
    exc: BaseException, lm: dspy.LM, call: tuple[Any, Any, dict[str, Any]]
) -> dict[str, Any] | None:
    """The client options of the LiteLLM route when ``exc`` says the pooled engine refused
    ``call`` (prompt, messages, kwargs) before sending it; None when it may have been sent (a
    refusal read from a response must not be sent again, and billed twice)."""
    from dspy.clients import execution
    from dspy.lm15 import UnsupportedFeatureError

    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    for cause in causes:
        if isinstance(cause, NativeRouteRefused):
            return cause.clients
    engine = getattr(lm, "_engine_spec", None)
    if not isinstance(engine, _Declared) or not any(isinstance(c, UnsupportedFeatureError) for c in causes):
        return None
    # Does DSPy refuse to make this call canonical? Offline, as DSPy's engine="auto" checks.
    prompt, messages, kwargs = call
    try:
        execution._canonical(execution.prepare(lm, prompt, messages, kwargs))
    except UnsupportedFeatureError:
        return engine.clients
    except Exception:  # any other answer: not a refusal we can route around
        return None
    return None


class _Declared:
    """Capability hints DSPy reads from a custom engine (dspy.clients.capabilities), and the
    choice between the native engine and the LiteLLM fallback."""

    def __init__(self, inner: Any, capabilities: Any, clients: dict[str, Any], transport: Any) -> None:
        self._inner = inner
        self.clients = clients  # the same endpoint and timeout, for DSPy's LiteLLM engine
        self._transport = transport  # handed to ``inner``, which leaves closing it to its owner
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
            raise NativeRouteRefused(exc, self.clients) from exc
        return self._inner


class PooledEngine(_Declared):
    def complete(self, request: Any) -> Any:
        return self._route(request).complete(request)

    def stream(self, request: Any) -> Iterator[Any]:
        return self._route(request).stream(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._inner.close()
        self._transport.close()


class AsyncPooledEngine(_Declared):
    async def complete(self, request: Any) -> Any:
        engine = self._route(request)
        if engine is self._inner and getattr(engine, "_providers", None) and hasattr(engine, "_target"):
            # DSPy's engine finds the provider's client in a worker thread on every call, since
            # building it may read credentials; once built, finding it is a dict lookup, and
            # the thread hop (~0.1 ms of CPU) costs more than the work it moves.
            provider, routed = engine._target(request)
            return await provider.complete(routed)
        return await engine.complete(request)

    def stream(self, request: Any) -> AsyncIterator[Any]:
        return self._route(request).stream(request)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._inner.aclose()
        await self._transport.aclose()


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
    base_urls = {provider: api_base} if api_base else None
    from dspy._vendor.lm15.transports import StdlibAsyncTransport, StdlibTransport

    sized = RouterConfig(timeouts=timeouts_for(timeout), max_connections=max_connections)
    options = _transport_options(sized)
    sync_transport, async_transport = StdlibTransport(**options), StdlibAsyncTransport(**options)
    declared = capabilities(probe)
    return (
        PooledEngine(
            LM15Engine(RouterConfig(base_urls=base_urls, transport=sync_transport), model_type="chat"),
            declared,
            clients,
            sync_transport,
        ),
        AsyncPooledEngine(
            AsyncLM15Engine(RouterConfig(base_urls=base_urls, transport=async_transport), model_type="chat"),
            declared,
            clients,
            async_transport,
        ),
    )


def _transport_options(sized: Any) -> dict[str, Any]:
    """The keywords of lm15's transports, sized by ``sized``, that do not re-read the proxy
    variables on every request when none is set.

    lm15 reads ``*_PROXY`` / ``NO_PROXY`` from the environment on every request (``getproxies()``
    decodes all of ``os.environ``: ~0.1 ms of CPU per LM call). When none is set at start-up the
    transport connects directly, as it would have found on each call; when one is set, lm15 keeps
    reading them per request (``NO_PROXY`` is matched per host). A transport handed to an engine
    stays its owner's to close: the engines here close theirs.
    """
    from urllib.request import getproxies

    options: dict[str, Any] = sized.transport_kwargs()
    options["trust_env"] = bool(getproxies())
    return options
