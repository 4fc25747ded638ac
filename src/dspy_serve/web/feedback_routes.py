"""``POST /NAME/feedback`` for every captured program, and the feedback token on each answer.

The capture observer is built and registered here, so a server without ``--capture`` has
neither routes nor store. (No ``from __future__ import annotations``: FastAPI reads the body
model from the handler's annotation at runtime.)
"""

from collections.abc import AsyncIterator
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

__all__ = ["FeedbackTokenMiddleware", "add_feedback", "feedback_paths"]

TOKEN_HEADER = "X-Feedback-Token"


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
    unknown = sorted(set(service.settings.capture) - {"*", *service.programs})
    if unknown:
        raise ValueError(
            f"--capture {', '.join(unknown)}: no such program (serving {', '.join(service.programs)})"
        )
    capture = Capture.of(service.settings, service.metrics)
    if capture is None:
        return None
    service.observers.add(capture)
    router = APIRouter()
    for program in service.programs.values():
        if capture.captures(program.name):
            _add_route(router, service, capture, program)
    app.include_router(router)
    secret = service.settings.feedback_token_secret
    if secret is not None:
        app.add_middleware(
            FeedbackTokenMiddleware,
            secret=secret.get_secret_value(),
            ttl=service.settings.feedback_token_ttl,
            programs=frozenset(name for name in service.programs if capture.captures(name)),
        )
    return capture


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
    captured program: pure ASGI, it reads only the response's headers."""

    def __init__(self, app: ASGIApp, secret: str, ttl: float, programs: frozenset[str]) -> None:
        self.app, self.secret, self.ttl, self.programs = app, secret, ttl, programs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        program = scope["path"].strip("/").partition("/")[0] if scope["type"] == "http" else ""
        if program not in self.programs:
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                call_id = next((v for k, v in message.get("headers", []) if k == b"x-call-id"), None)
                if call_id is not None:
                    token = mint_token(self.secret, program, call_id.decode("latin-1"), self.ttl)
                    message["headers"] = [*message["headers"], (b"x-feedback-token", token.encode("ascii"))]
            await send(message)

        await self.app(scope, receive, send_with_token)
