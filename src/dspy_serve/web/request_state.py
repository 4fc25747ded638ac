"""The one typed object a request carries through the HTTP layer, and the disconnect watch.

Starlette's ``scope["state"]`` holds a single entry, the request's
:class:`~dspy_serve.serving.caller.Caller`: made by the outermost middleware, completed by the
API-key check and the front door, read by the access log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import HTTPConnection
from starlette.types import Scope

from dspy_serve.errors import ClientCancelled, UnsupportedMediaType
from dspy_serve.serving.caller import CacheControl, Caller

__all__ = ["caller_in", "caller_of", "require_json", "reuse_headers", "until_disconnected"]

T = TypeVar("T")

_KEY = "dspy_serve.caller"


def caller_in(scope: Scope) -> Caller:
    """The request's caller, made on first use (a router mounted in another app has no
    middleware of ours to make it)."""
    state = scope.setdefault("state", {})
    caller = state.get(_KEY)
    if caller is None:
        client = scope.get("client")
        caller = state[_KEY] = Caller(address=client[0] if client else "unknown")
        for name, value in scope.get("headers", ()):
            if name == b"cache-control":
                caller.cache_control = CacheControl.parse(value.decode("latin-1"))
    assert isinstance(caller, Caller)
    return caller


def caller_of(connection: HTTPConnection) -> Caller:
    return caller_in(connection.scope)


def reuse_headers(caller: Caller) -> dict[str, str]:
    """``X-Cache: hit|miss`` when the call could be answered by the response cache or an
    identical call in flight, and ``X-Coalesced: true`` when it was by the latter."""
    if caller.cache is None:
        return {}
    if caller.coalesced:
        return {"X-Cache": caller.cache, "X-Coalesced": "true"}
    return {"X-Cache": caller.cache}


def require_json(connection: HTTPConnection) -> None:
    """Refuse a body that is not declared JSON (``application/json`` or ``application/*+json``).

    A web page can make a visitor's browser post a form or ``text/plain`` (or an untyped body)
    to any site, a local server included, without asking first; JSON needs a CORS preflight.
    """
    media_type = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise UnsupportedMediaType("Send the body as JSON, with 'Content-Type: application/json'.")


async def until_disconnected(connection: HTTPConnection, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client hangs up first: nobody would read the
    answer, and the LM bill would keep running.

    The watcher is never cancelled: once the response is complete the server reports the
    request as disconnected and the watcher ends by itself. (A cancellation per request leaves
    reference cycles behind, which cost a full garbage collection every few hundred requests.)
    """
    call = asyncio.ensure_future(work)
    hung_up = False
    receive = connection.receive  # type: ignore[attr-defined]  # a Request, which has a body

    async def watch() -> None:
        nonlocal hung_up
        # The body is read by now: the next message is the disconnect, whenever it comes.
        while (await receive())["type"] != "http.disconnect":
            pass
        if not call.done():
            hung_up = True
            call.cancel()

    caller_of(connection).held.append(asyncio.ensure_future(watch()))
    try:
        return await call
    except asyncio.CancelledError:
        if hung_up:
            raise ClientCancelled("the client closed the connection") from None
        raise
