"""What a handler asks of the HTTP connection itself: a body declared JSON, and its client
still there (:func:`until_disconnected` cancels the work of a client that hung up)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import HTTPConnection

from dspy_serve.errors import ClientCancelled, UnsupportedMediaType
from dspy_serve.web.request_state import caller_of

__all__ = ["require_json", "until_disconnected"]

T = TypeVar("T")


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
