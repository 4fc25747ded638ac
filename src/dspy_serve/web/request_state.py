"""The one typed object a request carries through the HTTP layer.

Starlette's ``scope["state"]`` holds a single entry, the request's
:class:`~dspy_serve.serving.caller.Caller`: made by the outermost middleware, completed by the
API-key check and the front door, read by the access log.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Scope

from dspy_serve.serving.caller import CacheControl, Caller

__all__ = ["caller_in", "caller_of", "reuse_headers"]

_KEY = "dspy_serve.caller"


def caller_in(scope: Scope) -> Caller:
    """The request's caller, made on first use (a router mounted in another app has no
    middleware of ours to make it)."""
    state = scope.setdefault("state", {})
    caller = state.get(_KEY)
    if caller is None:
        client = scope.get("client")
        caller = state[_KEY] = Caller(
            address=client[0] if client else "unknown", headers=scope.get("headers", ())
        )
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
