"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models`` over the served programs.

Why: SDKs, chat UIs and eval harnesses speak OpenAI's chat API, not ours. Here ``model`` names a
program; the last user message fills the program's one ``str`` input, earlier turns its
``dspy.History`` input, and its ``str`` output is the assistant's reply (all outputs in
``dspy_outputs``). Calls take the native path: same API keys, rate limits, admission,
deadline, cancellation, output checks and metrics; only the wire shapes differ, errors
included (``{"error": {message, type, param, code}}``, with the native statuses).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import dspy
from dspy.streaming import StreamResponse
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from dspy_serve.errors import (
    HTTPProblem,
    InvalidInput,
    ProgramNotFound,
    RequestTimeout,
    ServeError,
    from_exception,
)
from dspy_serve.routes import _admit, _charge, total_tokens, until_disconnected
from dspy_serve.runner import CallResult
from dspy_serve.scope import CallScope
from dspy_serve.service import Program, Service, _checked
from dspy_serve.streaming import EventStreamResponse

__all__ = ["ChatRequest", "ChatShape", "UnsupportedRequest", "build_openai_router", "chat_shape"]

M = TypeVar("M", bound=BaseModel)


class UnsupportedRequest(ServeError):
    """A well-formed request that this program cannot answer as a chat (400, as OpenAI does)."""

    status, code, title = 400, "invalid_request", "Invalid request"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail)
        self.param = param


# --- the request --------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if not isinstance(self.content, list):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise UnsupportedRequest("only text content parts are supported", param="messages")
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's request body. Parameters not listed are accepted and ignored, as clients send many."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)  # wins over max_tokens
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    def options(self, limit: int) -> dict[str, Any]:
        """The native per-request options within the native limits; no LM override, since
        ``model`` names the program."""
        tokens = self.max_completion_tokens or self.max_tokens
        if tokens is not None and tokens > limit:
            loc = ["max_completion_tokens" if self.max_completion_tokens else "max_tokens"]
            error = {
                "loc": loc,
                "msg": f"Input should be less than or equal to {limit}",
                "type": "less_than_equal",
            }
            raise InvalidInput("Invalid request body", errors=[error])
        return {k: v for k, v in (("temperature", self.temperature), ("max_tokens", tokens)) if v is not None}


def _validated(model: type[M], data: Any, title: str, *, at: str | None = None) -> M:
    """Validate here rather than in FastAPI, so errors answer in OpenAI's shape (422, field paths)."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": [at, *err["loc"]] if at else list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidInput(title, errors=errors) from exc


# --- how a conversation maps onto a program -----------------------------------------------------
@dataclass(frozen=True)
class ChatShape:
    """Which input takes the user's message, which takes the history, which output is the reply."""

    message: str
    history: str | None
    reply: str | None  # None: no str output; the reply is all outputs as JSON
    predictor: str | None  # the predictor whose ``reply`` tokens are streamed

    def inputs(self, program: Program, messages: list[ChatMessage]) -> dict[str, Any]:
        """The program's validated inputs. System and tool messages are not passed on: the
        program's signature holds its instructions."""
        turns = [m for m in messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise UnsupportedRequest(
                "the last user or assistant message must be the user's", param="messages"
            )
        values: dict[str, Any] = {self.message: turns[-1].text()}
        if self.history is not None:
            values[self.history] = dspy.History(messages=self._history(turns[:-1]))
        title = "The messages do not fit the program's inputs"
        validated = _validated(program.interface.inputs, values, title, at="messages")
        return {name: getattr(validated, name) for name in type(validated).model_fields}

    def _history(self, turns: list[ChatMessage]) -> list[dict[str, Any]]:
        """``[{message: user text, reply: assistant text}, ...]``, as dspy.History expects."""
        entries: list[dict[str, Any]] = []
        for turn in turns:
            if turn.role == "user":
                entries.append({self.message: turn.text()})
            elif self.reply is not None and entries and self.reply not in entries[-1]:
                entries[-1][self.reply] = turn.text()
            elif self.reply is not None:
                entries.append({self.reply: turn.text()})
        return entries

    def streams(self, token: StreamResponse) -> bool:
        return (token.predict_name, token.signature_field_name) == (self.predictor, self.reply)

    def content(self, outputs: dict[str, Any]) -> str:
        value = outputs.get(self.reply) if self.reply is not None else None
        return value if isinstance(value, str) else json.dumps(outputs, ensure_ascii=False, default=str)


def chat_shape(program: Program) -> ChatShape:
    """Read the chat mapping off the program's interface, or say why there is none."""
    inputs = program.interface.inputs.model_fields
    history = next((n for n, f in inputs.items() if f.annotation is dspy.History), None)
    texts = [n for n, f in inputs.items() if f.annotation is str]
    if len(texts) > 1:
        texts = [n for n in texts if inputs[n].is_required()]
    invoke = f"Call POST /{program.name}/invoke instead."
    if len(texts) != 1:
        described = ", ".join(
            f"{n}: {getattr(f.annotation, '__name__', f.annotation)}" for n, f in inputs.items()
        )
        raise UnsupportedRequest(
            f"program {program.name!r} cannot take a chat message: it needs exactly one required str "
            f"input to receive it, and its inputs are ({described}). {invoke}",
            param="model",
        )
    missing = [n for n, f in inputs.items() if f.is_required() and n not in (texts[0], history)]
    if missing:
        raise UnsupportedRequest(
            f"program {program.name!r} also needs {', '.join(missing)}, which a chat cannot supply. {invoke}",
            param="model",
        )
    outputs = [n for n, f in program.interface.outputs.model_fields.items() if f.annotation is str]
    reply = next((n for n in outputs if n != "reasoning"), outputs[0] if outputs else None)
    streamers = [
        name
        for name, predictor in program.loaded.module.named_predictors()
        if reply is not None and reply in predictor.signature.output_fields
    ]
    return ChatShape(texts[0], history, reply, streamers[-1] if streamers else None)


# --- responses ----------------------------------------------------------------------------------
def openai_usage(usage: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Tokens summed over every LM the program called."""
    prompt = sum(int(u.get("prompt_tokens") or 0) for u in usage.values())
    completion = sum(int(u.get("completion_tokens") or 0) for u in usage.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total_tokens(usage)}


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(error: ServeError) -> dict[str, Any]:
    """OpenAI's error object: ``code`` is the native problem code, ``param`` the first bad field."""
    message, param = error.detail, getattr(error, "param", None)
    if error.errors:
        where = [".".join(str(p) for p in err.get("loc", [])) for err in error.errors]
        pairs = zip(where, error.errors, strict=True)
        message += ": " + "; ".join(f"{w or 'body'}: {err.get('msg')}" for w, err in pairs)
        param = param or where[0] or None
    if isinstance(error, ProgramNotFound):
        param = "model"
    kind = _ERROR_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": error.code}}


def error_response(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, HTTPException):  # the body-size limit, raised while the body is read
        error: ServeError = HTTPProblem(exc.status_code, str(exc.detail))
    else:
        error = from_exception(exc)
    request.state.error_code = error.code  # for metrics and the access log
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers())


def sse_data(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False, default=str)}\n\n".encode()


_DONE = b"data: [DONE]\n\n"


class _Completion:
    """One completion: the envelope its body or its chunks share, and how they are written."""

    def __init__(self, program: str, shape: ChatShape, include_usage: bool) -> None:
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": program}
        self.shape = shape
        self.include_usage = include_usage

    def whole(self, result: CallResult) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.shape.content(result.outputs)}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        usage = openai_usage(result.usage)
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": usage,
            "dspy_outputs": result.outputs,
        }

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        """A ``chat.completion.chunk``; ``delta=None`` is the usage chunk, which has no choices."""
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )
        body = {**self.head, "object": "chat.completion.chunk", "choices": choices, **extra}
        if self.include_usage:
            body.setdefault("usage", None)
        return sse_data(body)


# --- the router ---------------------------------------------------------------------------------
def build_openai_router(service: Service) -> APIRouter:
    """The OpenAI-compatible routes. Every error answers in OpenAI's shape, never problem+json,
    so they are left out of our OpenAPI document (OpenAI's API reference describes them)."""
    router = APIRouter(include_in_schema=False)
    created = int(time.time())

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "dspy-serve"}

    def find(name: str) -> Program:
        program = service.programs.get(name)
        if program is None:
            raise ProgramNotFound(
                f"The model {name!r} does not exist; the models here are the served "
                f"programs: {', '.join(service.programs)} (GET /v1/models)."
            )
        return program

    @router.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        key = getattr(request.state, "api_key", None)  # list only what the caller's key may call
        names = [n for n in service.programs if key is None or key.may_call(n)]
        return JSONResponse({"object": "list", "data": [card(n) for n in names]})

    @router.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> JSONResponse:
        try:
            return JSONResponse(card(find(model).name))
        except ServeError as exc:
            return error_response(request, exc)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        try:
            body = _validated(ChatRequest, await request.body(), "Invalid request body")
            program = find(body.model)
            shape = chat_shape(program)
            inputs = shape.inputs(program, body.messages)
            opts = body.options(service.settings.max_tokens_limit)
            limits = Response()
            caller = await _admit(service, program, request, limits, opts)
            headers = {k: v for k, v in limits.headers.items() if k.lower().startswith("ratelimit-")}
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            completion = _Completion(program.name, shape, include_usage)

            async def charge(result: CallResult) -> None:
                await _charge(service, request, caller, result.usage, result.cost)

            if body.stream:
                return _stream(service, program, inputs, opts, completion, charge, headers)
            result = await until_disconnected(request, service.call(program, inputs, **opts))
            await charge(result)
            return JSONResponse(completion.whole(result), headers=headers)
        except Exception as exc:
            return error_response(request, exc)

    return router


def _stream(
    service: Service,
    program: Program,
    inputs: dict[str, Any],
    opts: dict[str, Any],
    completion: _Completion,
    charge: Callable[[CallResult], Awaitable[None]],
    headers: dict[str, str],
) -> EventStreamResponse:
    """The reply field's tokens as chunks (never reasoning's). As in ``Service.stream``, refusals
    before the first byte stay HTTP statuses; later errors are an ``{"error": ...}`` line."""
    runner, lm = service._begin(program, None, opts.get("temperature"), opts.get("max_tokens"))
    admission, shape = service.admission, completion.shape
    assert admission is not None
    admission.check()
    scope = CallScope.starting_now(service.settings.timeout)

    async def events() -> AsyncGenerator[bytes, None]:
        yield completion.chunk({"role": "assistant", "content": ""})
        sent = ""
        try:
            async with admission.slot(), aclosing(runner.stream(inputs, lm=lm, scope=scope)) as items:
                async for item in items:
                    if isinstance(item, StreamResponse) and item.chunk and shape.streams(item):
                        sent += item.chunk
                        yield completion.chunk({"content": item.chunk})
                    elif isinstance(item, CallResult):
                        result = _checked(program, item, service.metrics)
                        await charge(result)
                        content = shape.content(result.outputs)
                        rest = content[len(sent) :] if content.startswith(sent) else ""
                        if rest:  # a cache hit, or a reply that no predictor streams
                            yield completion.chunk({"content": rest})
                        yield completion.chunk({}, "stop", dspy_outputs=result.outputs)
                        if completion.include_usage:
                            yield completion.chunk(None, usage=openai_usage(result.usage))
        except Exception as exc:
            error = from_exception(exc)
            service.metrics.errors.labels(error.code).inc()
            yield sse_data(error_body(error))
        yield _DONE

    def on_timeout() -> bytes:
        scope.cancel()
        timeout = RequestTimeout(f"The program did not finish within {service.settings.timeout:g} s.")
        return sse_data(error_body(timeout)) + _DONE

    return EventStreamResponse(
        events,
        heartbeat=service.settings.stream_heartbeat,
        timeout=service.settings.timeout,
        on_timeout=on_timeout,
        headers=headers,
    )
