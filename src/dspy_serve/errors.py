"""Errors, and their one mapping to HTTP.

Every error a caller can see is a :class:`ServeError` carrying its HTTP status and a stable
``code``; :func:`from_exception` turns anything raised while serving (DSPy's typed exceptions
included) into one, by type, never by matching message text. The HTTP layer renders them all
as RFC 9457 ``application/problem+json``::

    ServeError (500 internal)
├── InvalidProgramOutput (500)     the program's own outputs do not fit its declared schema
    ├── InvalidInput (422)             request body or field failed validation
    ├── BadOverride (400)              options out of range
    ├── UnsupportedRequest (400)       well-formed, but this program cannot answer it (OpenAI /v1)
    ├── Unauthorized (401)             missing or unknown API key
    ├── ModelNotAllowed (403)          options.model outside the allow-list (or the key's)
    ├── Forbidden (403)                the API key may not call this program
    ├── TraceNotExposed (403)          options.trace on a server that does not expose traces
    ├── PromptsNotExposed (403)        options.prompts on a server, or for a key, that may not see them
    ├── ProgramNotFound (404)
    ├── CallNotFound (404)             feedback for a call the server does not know (or no longer)
    ├── UnsupportedMediaType (415)     a body that is not JSON (a cross-site form or text/plain post)
    ├── ContextTooLong (413)           the prompt exceeds the model's context window
    ├── RateLimited (429)              the caller's request or token budget is spent
    ├── UpstreamRateLimited (429)      the LM provider said 429; Retry-After passed on
    ├── UpstreamError (502)            LM server/transport failure, unparseable LM output
    ├── ServiceUnavailable (503)       not ready, shutting down, LM auth/billing/config
    │   ├── Overloaded (503)           in-flight limit and queue full; Retry-After
    │   └── StoreUnavailable (503)     the store (SQLite, PostgreSQL) did not answer
    ├── RequestTimeout (504)           the request's deadline passed
    ├── ClientCancelled (499)          the client went away (only logged)
    ├── HTTPProblem (any)              a routing or protocol error (404, 405, 413 body, ...)
    └── ProxyError (any, client side)  an error response dspy-serve did not write

Messages are written for the caller: no stack traces, provider payloads or secrets.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
from collections.abc import Sequence
from typing import Any

import dspy
from pydantic import ValidationError

from dspy_serve.redaction import redact

__all__ = [
    "MAX_RETRY_AFTER",
    "PROBLEM_CONTENT_TYPE",
    "BadOverride",
    "CallNotFound",
    "ClientCancelled",
    "ContextTooLong",
    "Forbidden",
    "HTTPProblem",
    "InvalidInput",
    "InvalidProgramOutput",
    "ModelNotAllowed",
    "Overloaded",
    "ProgramNotFound",
    "PromptsNotExposed",
    "ProxyError",
    "RateLimited",
    "RequestTimeout",
    "RolloutConflict",
    "ServeError",
    "ServiceUnavailable",
    "StoreUnavailable",
    "TraceNotExposed",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnsupportedRequest",
    "UpstreamError",
    "UpstreamRateLimited",
    "VersionLoadFailed",
    "VersionNotFound",
    "error_class",
    "from_exception",
    "note_usage",
    "sane_retry_after",
]

logger = logging.getLogger("dspy_serve.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"

# The longest wait a provider's Retry-After may ask of us and our callers (one was 309 digits).
MAX_RETRY_AFTER = 3600.0


def _redacted_error(error: dict[str, Any]) -> dict[str, Any]:
    return {key: redact(value) if isinstance(value, str) else value for key, value in error.items()}


def sane_retry_after(value: object) -> float | None:
    """A Retry-After from elsewhere (a provider, a server) as seconds within
    ``[0, MAX_RETRY_AFTER]``; None when it is not a number at all."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ServeError(Exception):
    """Base of every error a caller can see."""

    status: int = 500
    code: str = "internal"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Whatever text reached an error (a program's own, a library's), no known secret leaves.
        self.detail = redact(detail or self.title)
        self.errors = errors if errors is None else [_redacted_error(err) for err in errors]
        self.retry_after = retry_after
        # Tokens already spent when the call failed (per model): still billed, still reported.
        self.usage: dict[str, dict[str, Any]] | None = None
        super().__init__(self.detail)

    def __str__(self) -> str:
        """The detail and, where the problem has them, its field errors: ``inputs.question: Field
        required`` says what to fix (they never hold the offending input)."""
        fields = self.field_errors()
        return f"{self.detail} ({'; '.join(fields)})" if fields else self.detail

    def field_errors(self) -> list[str]:
        """``path: message`` per field error, the request-body prefix left out."""
        lines = []
        for err in self.errors or []:
            loc = [str(part) for part in err.get("loc", ())]
            if loc[:1] == ["body"]:
                loc = loc[1:]
            lines.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return lines

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Round up: telling a client to come back before the provider allows it is worse.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def problem(self, *, request_id: str | None = None, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body; ``code`` and ``request_id`` are extension members."""
        body: dict[str, Any] = {
            "type": f"urn:dspy-serve:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        if request_id is not None:
            body["request_id"] = request_id
        if self.errors is not None:
            body["errors"] = self.errors
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        if self.usage:
            body["usage"] = self.usage
        return body


class InvalidInput(ServeError):
    status, code, title = 422, "invalid_input", "Invalid input"

    @classmethod
    def from_validation(
        cls, exc: ValidationError, detail: str | None = None, *, at: Sequence[str | int] = ()
    ) -> InvalidInput:
        """Pydantic's errors as ours: field paths under ``at``, never the offending input."""
        errors = [
            {"loc": [*at, *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        return cls(detail, errors=errors)


class InvalidProgramOutput(ServeError):
    """The program returned something its own published schema does not allow.

    A 500, not a 502: no upstream answered badly (an unparseable LM answer is a 502
    ``upstream_error``), the served program broke its contract, and retrying will not help.
    ``errors`` holds the field paths under ``outputs``."""

    status, code, title = 500, "invalid_program_output", "The program's outputs do not match its schema"


class UnsupportedRequest(ServeError):
    """A well-formed request that this program cannot answer as a chat (400, as OpenAI does)."""

    status, code, title = 400, "invalid_request", "Invalid request"

    def __init__(self, detail: str | None = None, *, param: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.param = param


class Unauthorized(ServeError):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class BadOverride(ServeError):
    status, code, title = 400, "bad_override", "Invalid request options"


class ModelNotAllowed(ServeError):
    status, code, title = 403, "model_not_allowed", "Model not allowed"


class Forbidden(ServeError):
    status, code, title = 403, "forbidden", "Not allowed for this API key"


class TraceNotExposed(ServeError):
    """A call's trace shows the program's intermediate steps: only when the operator allows it."""

    status, code, title = 403, "trace_not_exposed", "Traces are not exposed"


class PromptsNotExposed(ServeError):
    """Prompts and raw LM responses show the program's instructions and demos: only when the
    operator allows it, and for a restricted API key only when its key line says so."""

    status, code, title = 403, "prompts_not_exposed", "Prompts are not exposed"


class ProgramNotFound(ServeError):
    status, code, title = 404, "program_not_found", "Program not found"

    @classmethod
    def named(cls, name: str, served: Sequence[str]) -> ProgramNotFound:
        """``no program named 'prioritise' on this server; it serves: prioritize, triage (did you
        mean 'prioritize'?)``, as the client says it: ``served`` is what the caller may see."""
        close = difflib.get_close_matches(name, served, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return cls(
            f"no program named {name!r} on this server; it serves: {', '.join(served) or 'none'}{hint}"
        )


class CallNotFound(ServeError):
    status, code, title = 404, "call_not_found", "Call not found"


class JobNotFound(ServeError):
    status, code, title = 404, "job_not_found", "Job not found"


class JobCancelled(ServeError):
    status, code, title = 409, "job_cancelled", "The job was cancelled"


class VersionNotFound(ServeError):
    status, code, title = 404, "version_not_found", "Program version not found"


class RolloutConflict(ServeError):
    """A rollout change that contradicts the rollout as it is (promote the stable version,
    roll back with nothing to go back to, reuse a version's name for other content)."""

    status, code, title = 409, "rollout_conflict", "Rollout conflict"


class VersionLoadFailed(ServeError):
    """A version could not be loaded; everything serves as before, and the detail says why."""

    status, code, title = 422, "version_load_failed", "Version load failed"


class UnsupportedMediaType(ServeError):
    """Only JSON bodies are taken: a browser may send a form or text/plain body to any site,
    without asking first, but never JSON."""

    status, code, title = 415, "unsupported_media_type", "The body must be JSON"


class ContextTooLong(ServeError):
    status, code, title = 413, "context_window_exceeded", "Input too long for the model's context window"


class RateLimited(ServeError):
    """The caller's own budget (requests or LM tokens per window) is spent."""

    status, code, title = 429, "rate_limited", "Rate limit exceeded"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        limit_headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after, errors=errors)
        self.limit_headers = limit_headers or {}

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.limit_headers}


class UpstreamRateLimited(ServeError):
    status, code, title = 429, "upstream_rate_limited", "The LM provider is rate limiting"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        # The provider's value is passed on, but never an absurd one.
        super().__init__(detail, retry_after=sane_retry_after(retry_after), errors=errors)


class UpstreamError(ServeError):
    status, code, title = 502, "upstream_error", "The LM provider failed"


class ServiceUnavailable(ServeError):
    status, code, title = 503, "unavailable", "Service unavailable"


class Overloaded(ServiceUnavailable):
    code, title = "overloaded", "Too many requests in flight"


class StoreUnavailable(ServiceUnavailable):
    code, title = "store_unavailable", "The store did not answer"


class RequestTimeout(ServeError):
    status, code, title = 504, "timeout", "The request timed out"

    @classmethod
    def after(cls, seconds: float) -> RequestTimeout:
        """The program ran past the server's deadline of ``seconds``."""
        return cls(f"The program did not finish within {seconds:g} s.")


class HTTPProblem(ServeError):
    """A routing error from Starlette (404, 405, ...) in the common shape."""

    code = "http_error"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = self.detail  # as redacted


class ClientCancelled(ServeError):
    status, code, title = 499, "client_cancelled", "The client closed the request"


class ProxyError(ServeError):
    """An error response that dspy-serve did not write: a proxy or load balancer in front of it
    answered instead (Ray Serve's proxy says 500 when the replica serving the call died)."""

    code = "proxy_error"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def error_class(code: str) -> type[ServeError] | None:
    """The class behind a problem's ``code``, for clients that rebuild typed errors from bodies.

    Derived from the hierarchy itself, so a new error type is known to clients without a table
    to keep in step. Errors whose code is not fixed (HTTPProblem, ProxyError) are not listed.
    """
    return _BY_CODE.get(code)


def _subclasses(cls: type[ServeError]) -> list[type[ServeError]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


_FIXED_CODES: list[type[ServeError]] = [ServeError, *_subclasses(ServeError)]
_BY_CODE = {cls.code: cls for cls in _FIXED_CODES if cls is not HTTPProblem and cls is not ProxyError}


_SPENT = "_dspy_serve_usage"


def note_usage(exc: BaseException, usage: dict[str, dict[str, Any]]) -> None:
    """Keep the tokens a failed call had already spent on what it raised, so that the error the
    caller gets (whatever it is classified as) still reports them."""
    if not usage:
        return
    if isinstance(exc, ServeError):
        exc.usage = exc.usage or usage
    else:
        with contextlib.suppress(AttributeError):  # a type with __slots__: nothing to report then
            setattr(exc, _SPENT, usage)


def from_exception(exc: BaseException) -> ServeError:
    """Classify anything raised while serving a call, by exception type; tokens it had already
    spent (see :func:`note_usage`) stay on the error."""
    error = _classify(exc)
    if error.usage is None:
        error.usage = getattr(exc, _SPENT, None)
    return error


def _classify(exc: BaseException) -> ServeError:
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, dspy.LMRateLimitError):
        return UpstreamRateLimited(
            "The LM provider is rate limiting requests; retry later.", retry_after=exc.retry_after
        )
    if isinstance(exc, dspy.LMTimeoutError):
        return RequestTimeout("The LM provider did not answer in time.")
    if isinstance(exc, dspy.ContextWindowExceededError):
        return ContextTooLong("The input is too long for the model's context window; shorten it.")
    if isinstance(exc, (dspy.LMAuthError, dspy.LMBillingError, dspy.LMConfigurationError)):
        # The operator must act; the caller learns nothing about credentials or accounts.
        logger.error("LM is misconfigured or unauthorised: %s (%s)", type(exc).__name__, exc.code)
        return ServiceUnavailable("The language model is not available; the operator has been notified.")
    if isinstance(exc, (dspy.LMServerError, dspy.LMTransportError, dspy.LMUnexpectedError)):
        return UpstreamError(f"The LM provider failed ({exc.code}).")
    if isinstance(exc, dspy.AdapterParseError):
        return UpstreamError(
            "The LM's answer could not be parsed into the program's output fields.",
            errors=_parse_error_fields(exc),
        )
    if isinstance(exc, dspy.LMError):
        return UpstreamError(f"The LM call failed ({exc.code}).")
    if isinstance(exc, TimeoutError):
        return RequestTimeout()
    logger.error("unhandled error while serving a program", exc_info=exc)
    return ServeError()


def _parse_error_fields(exc: dspy.AdapterParseError) -> list[dict[str, Any]] | None:
    """Which output fields were missing, without echoing the LM's text (it may hold prompt data)."""
    signature = getattr(exc, "signature", None)
    parsed = getattr(exc, "parsed_result", None) or {}
    if signature is None:
        return None
    missing = [name for name in signature.output_fields if name not in parsed]
    return [{"loc": ["outputs", name], "msg": "missing from the LM's answer"} for name in missing] or None
