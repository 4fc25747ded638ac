"""Every error on the native wire as RFC 9457 problem+json, rendered by one function.

:func:`problem_body` is the one rendering (it also notes the error on the request's
:class:`~dspy_serve.serving.caller.Caller`, for the access log and the metrics); the exception
handlers, the middleware's early answers (:func:`send_problem`), the readiness check, a batch
item's error and the stream's ``error`` event all go through it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from dspy_serve.errors import PROBLEM_CONTENT_TYPE, HTTPProblem, InvalidInput, ServeError, from_exception
from dspy_serve.serving.call import CallOptions
from dspy_serve.serving.caller import Caller
from dspy_serve.web.request_state import caller_in, caller_of

__all__ = ["install_error_handlers", "problem_body", "problem_response", "send_problem"]

_PROGRAM_PATH = re.compile(r"^/([^/]+)/(?:invoke|stream|batch)$")


def problem_body(caller: Caller, error: ServeError, instance: str | None = None) -> dict[str, Any]:
    """The problem+json body of ``error``, noted on the request's caller (once per error)."""
    caller.report(error)
    return error.problem(request_id=caller.request_id, instance=instance)


def problem_response(
    request: Request, error: ServeError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    caller = caller_of(request)
    # A call that failed still names the version it ran on (#27).
    version = {"X-Program-Version": caller.version} if caller.version is not None else {}
    return JSONResponse(
        problem_body(caller, error, request.url.path),
        status_code=error.status,
        headers={**error.headers(), **version, **(headers or {})},
        media_type=PROBLEM_CONTENT_TYPE,
    )


async def send_problem(
    scope: Scope, send: Send, error: ServeError, headers: Mapping[str, str] | None = None
) -> None:
    """Answer with a problem+json body from middleware, before the app runs; ``headers`` are
    sent too (``Allow`` of a 405)."""
    body = json.dumps(problem_body(caller_in(scope), error, scope["path"])).encode()
    raw = [(b"content-type", PROBLEM_CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    extra = {**error.headers(), **(headers or {})}
    raw += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json, mapped in one place (``errors.from_exception``)."""

    async def on_serve_error(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, from_exception(exc))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(request, invalid_request(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error: ServeError = HTTPProblem(exc.status_code, str(exc.detail))
        service = getattr(request.app.state, "service", None)
        match = _PROGRAM_PATH.match(request.url.path)
        if exc.status_code in (404, 405) and service is not None and match is not None:
            try:  # a program's path: no such program, or none the caller may see (then no 405)
                service.find(caller_of(request), match.group(1))
            except ServeError as not_found:
                return problem_response(request, not_found)
        return problem_response(request, error, exc.headers)

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_serve_error)


def invalid_request(exc: RequestValidationError) -> InvalidInput:
    """FastAPI's validation errors as one InvalidInput: a body that is not JSON says so, with
    its line and column; a misspelt option names the option it is close to."""
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    if any(err["type"] == "json_invalid" for err in errors):
        return InvalidInput(_json_detail(exc), errors=errors)
    for err in errors:
        loc = err["loc"]
        if err["type"] == "extra_forbidden" and loc[:2] == ["body", "options"] and len(loc) == 3:
            close = difflib.get_close_matches(str(loc[2]), _OPTIONS, n=1)
            if close:
                err["msg"] = f"Extra inputs are not permitted; did you mean {close[0]!r}?"
    return InvalidInput("The request does not match the program's input schema.", errors=errors)


# The per-request options, for "did you mean" on a misspelt one.
_OPTIONS = [option.name for option in dataclasses.fields(CallOptions)]


def _json_detail(exc: RequestValidationError) -> str:
    body = getattr(exc, "body", None)
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if isinstance(text, str):
        try:
            json.loads(text)
        except json.JSONDecodeError as bad:
            return f"The body is not valid JSON: {bad.msg} at line {bad.lineno}, column {bad.colno}."
    return "The body is not valid JSON."
