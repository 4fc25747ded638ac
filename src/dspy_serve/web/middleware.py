"""Cross-cutting ASGI middleware, written as pure ASGI.

``BaseHTTPMiddleware`` runs the app in another task and breaks context variables, which DSPy
uses for its per-request settings; pure ASGI keeps one task and one context per request.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspy_serve.errors import HTTPProblem, ServeError
from dspy_serve.web.problems import send_problem
from dspy_serve.web.request_state import caller_in

__all__ = ["REQUEST_ID_HEADER", "BodyLimitMiddleware", "RequestIdMiddleware", "send_problem"]

REQUEST_ID_HEADER = "X-Request-ID"
# Accept the caller's id only when it cannot smuggle anything into logs or headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Give every request an id (the caller's ``X-Request-ID`` if sane), echoed on the response.

    ``echo=False`` leaves the response header to a proxy in front that sets it already (Ray
    Serve's), which would otherwise send it twice.
    """

    def __init__(self, app: ASGIApp, echo: bool = True) -> None:
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next(
            (value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), ""
        )
        request_id = supplied if _SAFE_ID.match(supplied) else uuid.uuid4().hex
        caller_in(scope).request_id = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id if self.echo else send)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413: at once when Content-Length says so, else as
    soon as the streamed body passes the limit (nothing more is read)."""

    def __init__(self, app: ASGIApp, max_bytes: int, job_max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.job_max_bytes = job_max_bytes  # POST /NAME/jobs: a job's items are many (#28)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        if self.job_max_bytes is not None and scope["method"] == "POST" and scope["path"].endswith("/jobs"):
            limit = self.job_max_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await send_problem(scope, send, self._too_large(limit))
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes FastAPI's body parsing untouched, to the problem handler.
                    raise HTTPException(413, self._too_large(limit).detail)
            return message

        await self.app(scope, limited, send)

    def _too_large(self, limit: int) -> ServeError:
        return HTTPProblem(413, f"The request body exceeds {limit} bytes.")
