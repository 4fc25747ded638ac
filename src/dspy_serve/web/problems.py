"""Every error as RFC 9457 problem+json, rendered in one place from the typed hierarchy."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dspy_serve.errors import PROBLEM_CONTENT_TYPE, HTTPProblem, InvalidInput, ServeError, from_exception
from dspy_serve.web.request_state import caller_of

__all__ = ["install_error_handlers"]


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json, mapped in one place (``errors.from_exception``)."""

    def render(request: Request, error: ServeError) -> JSONResponse:
        caller = caller_of(request)
        caller.report(error)  # counted and logged once, when the request ends
        return JSONResponse(
            error.problem(request_id=caller.request_id, instance=request.url.path),
            status_code=error.status,
            headers=error.headers(),
            media_type=PROBLEM_CONTENT_TYPE,
        )

    async def on_serve_error(request: Request, exc: Exception) -> JSONResponse:
        return render(request, from_exception(exc))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        return render(
            request, InvalidInput("The request does not match the program's input schema.", errors=errors)
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        response = render(request, HTTPProblem(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})
        return response

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_serve_error)
