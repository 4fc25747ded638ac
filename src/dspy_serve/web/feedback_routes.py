"""``POST /NAME/feedback`` for every captured program, and the feedback token on each answer:
the ``X-Feedback-Token`` header of an answer that names its call (``X-Call-Id``), and a
``feedback_token`` on each ``/NAME/batch`` item, which names its own call.

The capture observer is built and registered here, so a server without ``--capture`` has
neither routes nor store. (No ``from __future__ import annotations``: FastAPI reads the body
model from the handler's annotation at runtime.)
"""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspy_serve.data.capture import Capture
from dspy_serve.data.feedback import Rating, give_feedback
from dspy_serve.data.tokens import mint_token, verify_token
from dspy_serve.errors import Unauthorized
from dspy_serve.serving.call import CallOptions, admit
from dspy_serve.serving.keys import KeyRing
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import Service
from dspy_serve.web.program_routes import _JSON_ONLY, ERROR_RESPONSES
from dspy_serve.web.request_state import caller_of

__all__ = ["FeedbackTokenMiddleware", "add_feedback", "document_feedback_tokens", "feedback_paths"]

TOKEN_HEADER = "X-Feedback-Token"
_TOKEN_DOC = (
    "A token that rates this call without the API key (`X-Feedback-Token` on POST /NAME/feedback), "
    "until it expires; sent when the server has feedback tokens on."
)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(max_length=64, description="The `call_id` of the answer rated.")
    score: bool | float | None = Field(
        default=None, description="true/false, or a number (higher is better)."
    )
    outputs: dict[str, Any] | None = Field(
        default=None, description="Corrected outputs (some or all fields), checked against the output schema."
    )
    comment: str | None = Field(default=None, max_length=10_000, description="Free text, for the optimizer.")


class FeedbackResponse(BaseModel):
    call_id: str
    replaced: bool = Field(description="True when this replaced earlier feedback of the same key.")


def add_feedback(app: FastAPI, service: Service) -> Capture | None:
    """Capture and its feedback routes, when capture is on: returns the capture to run in the
    app's lifespan (:func:`running`)."""
    capture, router = capture_routes(service)
    if capture is None:
        return None
    app.include_router(router)
    secret = service.settings.feedback_token_secret
    if secret is not None:
        captured = frozenset(name for name in service.programs if capture.captures(name))
        app.add_middleware(
            FeedbackTokenMiddleware,
            secret=secret.get_secret_value(),
            ttl=service.settings.feedback_token_ttl,
            programs=captured,
        )
        document_feedback_tokens(app, captured)
    return capture


def capture_routes(service: Service) -> tuple[Capture | None, APIRouter]:
    """Capture, registered as an observer of ``service``'s calls, and ``POST /NAME/feedback``
    for each captured program (no routes when capture is off)."""
    unknown = sorted(set(service.settings.capture) - {"*", *service.programs})
    if unknown:
        raise ValueError(
            f"--capture {', '.join(unknown)}: no such program (serving {', '.join(service.programs)})"
        )
    router = APIRouter()
    capture = Capture.of(service.settings, service.metrics)
    if capture is None:
        return None, router
    service.observers.add(capture)
    for program in service.programs.values():
        if capture.captures(program.name):
            _add_route(router, service, capture, program)
    return capture, router


def feedback_paths(service: Service) -> frozenset[str]:
    """The feedback routes a token opens without an API key (only when tokens are on)."""
    settings = service.settings
    if not settings.capture or settings.feedback_token_secret is None:
        return frozenset()
    everything = "*" in settings.capture
    return frozenset(
        f"/{name}/feedback" for name in service.programs if everything or name in settings.capture
    )


@asynccontextmanager
async def running(capture: Capture) -> AsyncIterator[None]:
    await capture.start()
    try:
        yield
    finally:
        await capture.stop()


def _add_route(router: APIRouter, service: Service, capture: Capture, program: Program) -> None:
    secret = service.settings.feedback_token_secret
    keys_on = KeyRing.from_settings(service.settings) is not None

    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        caller = caller_of(request)
        token = request.headers.get(TOKEN_HEADER)
        token_call = None
        if token and secret is not None:
            token_call = verify_token(secret.get_secret_value(), token, program.name)
        elif caller.api_key is None and keys_on:
            raise Unauthorized("Send a valid API key, or the call's feedback token as X-Feedback-Token.")
        await admit(service, caller, program, CallOptions())
        rating = Rating(body.call_id, body.score, body.outputs, body.comment)
        key_name = caller.api_key.name if caller.api_key is not None else None
        replaced = await give_feedback(capture, program, rating, key_name=key_name, token_call=token_call)
        return FeedbackResponse(call_id=body.call_id, replaced=replaced)

    router.add_api_route(
        f"/{program.name}/feedback",
        feedback,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        response_model=FeedbackResponse,
        responses={**ERROR_RESPONSES, 404: {**ERROR_RESPONSES[422], "description": "Unknown call"}},
        summary=f"Rate or correct an answer of {program.name}",
        description="Feedback on one call, by its `call_id`: a score, corrected outputs, a comment (at least "
        "one). A key rates only its own calls; sending again replaces the earlier feedback (which is kept).",
        operation_id=f"{program.name}_feedback",
        tags=[program.name],
    )


class FeedbackTokenMiddleware:
    """Adds ``X-Feedback-Token`` to every answer that names its call (``X-Call-Id``) of a
    captured program, and a ``feedback_token`` to each item of a ``/NAME/batch`` answer (one
    call per item, each with its own token): pure ASGI, so the call path knows nothing of tokens.

    A batch answer is JSON of at most ``batch_max_items`` items, held whole to add the tokens; any
    other answer passes as it comes, only its headers read."""

    def __init__(self, app: ASGIApp, secret: str, ttl: float, programs: frozenset[str]) -> None:
        self.app, self.secret, self.ttl, self.programs = app, secret, ttl, programs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        program, _, rest = (
            scope["path"].strip("/").partition("/") if scope["type"] == "http" else ("", "", "")
        )
        if program not in self.programs:
            await self.app(scope, receive, send)
            return
        if rest == "batch":
            await self.app(scope, receive, _BatchTokens(send, lambda call_id: self._mint(program, call_id)))
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                call_id = next((v for k, v in message.get("headers", []) if k == b"x-call-id"), None)
                if call_id is not None:
                    token = self._mint(program, call_id.decode("latin-1"))
                    message["headers"] = [*message["headers"], (b"x-feedback-token", token.encode("ascii"))]
            await send(message)

        await self.app(scope, receive, send_with_token)

    def _mint(self, program: str, call_id: str) -> str:
        return mint_token(self.secret, program, call_id, self.ttl)


class _BatchTokens:
    """The ``send`` of a batch answer: a 200 JSON body is held until its last chunk, then sent
    with each item that names its call (``call_id``) carrying that call's ``feedback_token``.
    Errors (problem+json) and anything else pass untouched."""

    def __init__(self, send: Send, mint: Callable[[str], str]) -> None:
        self.send, self.mint = send, mint
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            media = next((v for k, v in message.get("headers", []) if k == b"content-type"), b"")
            if message["status"] == 200 and media.partition(b";")[0].strip() == b"application/json":
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = self._with_tokens(b"".join(self.chunks))
            headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
            await self.send(
                {**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            )
            self.start = None
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.send(message)

    def _with_tokens(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except ValueError:
            return body
        items = document.get("items") if isinstance(document, dict) else None
        if not isinstance(items, list):
            return body
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("call_id"), str):
                item["feedback_token"] = self.mint(item["call_id"])
        # As FastAPI's JSONResponse writes it.
        return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def document_feedback_tokens(app: FastAPI, programs: frozenset[str]) -> None:
    """Describe the tokens in the OpenAPI document: ``feedback_token`` on each batch item of the
    captured programs, and the ``X-Feedback-Token`` header of their answers. (The middleware adds
    them after the response models, so FastAPI cannot see them.)"""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        spec = generate()
        schemas = spec.get("components", {}).get("schemas", {})
        for program in programs:
            for route in ("invoke", "stream", "batch"):
                operation = spec.get("paths", {}).get(f"/{program}/{route}", {}).get("post")
                if operation is None:
                    continue
                ok = operation.get("responses", {}).get("200", {})
                if route != "batch":
                    ok.setdefault("headers", {})[TOKEN_HEADER] = {
                        "description": _TOKEN_DOC,
                        "schema": {"type": "string"},
                    }
                    continue
                item = _batch_item_schema(schemas, ok)
                if item is not None:
                    item.setdefault("properties", {})["feedback_token"] = {
                        "type": "string",
                        "title": "Feedback Token",
                        "description": _TOKEN_DOC,
                    }
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _batch_item_schema(schemas: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of one item of a batch answer, followed from the 200 response's references."""
    try:
        response = schemas[ok["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        item: dict[str, Any] = schemas[response["properties"]["items"]["items"]["$ref"].rsplit("/", 1)[1]]
    except (KeyError, TypeError, AttributeError):
        return None
    return item
