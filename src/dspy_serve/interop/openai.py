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
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import dspy
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from dspy_serve.errors import (
    HTTPProblem,
    InvalidInput,
    ProgramNotFound,
    ServeError,
    UnsupportedRequest,
    from_exception,
)
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.events import Failed, Finished, StreamEvent, Token
from dspy_serve.serving.programs import Program
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.service import CallOptions, Service
from dspy_serve.serving.usage import flat_usage
from dspy_serve.web.connection import require_json, until_disconnected
from dspy_serve.web.envelopes import NOT_BOOL_OR_STR
from dspy_serve.web.request_state import caller_of, reuse_headers
from dspy_serve.web.sse import CALL_ID_HEADER, VERSION_HEADER, EventStreamResponse

__all__ = ["ChatRequest", "ChatShape", "build_openai_router", "chat_replies", "chat_shape"]

M = TypeVar("M", bound=BaseModel)


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
    # Strict, as OpenAI is: `"temperature": false` or `"stream": "yes"` is an error, not a coercion.
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    max_tokens: Annotated[int, Field(gt=0), NOT_BOOL_OR_STR] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0), NOT_BOOL_OR_STR] | None = None  # wins over max_tokens
    stream: bool | None = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1), NOT_BOOL_OR_STR] | None = None

    def options(self, limit: int) -> CallOptions:
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
        return CallOptions(temperature=self.temperature, max_tokens=tokens)


def _validated(model: type[M], data: Any, title: str) -> M:
    """Validate here rather than in FastAPI, so errors answer in OpenAI's shape (422, field paths)."""
    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, title) from exc


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
        return program.interface.validate_inputs(values, title, at=["messages"])

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

    def streams(self, token: Token) -> bool:
        return (token.predictor, token.field) == (self.predictor, self.reply)

    def content(self, outputs: dict[str, Any]) -> str:
        value = outputs.get(self.reply) if self.reply is not None else None
        return value if isinstance(value, str) else json.dumps(outputs, ensure_ascii=False, default=str)


def chat_shape(program: Program, reply: str | None = None) -> ChatShape:
    """Read the chat mapping off the program's interface, or say why there is none. ``reply`` is
    the operator's choice of output (``--chat-reply NAME=FIELD``); by default, the program's last
    ``str`` output other than ``reasoning``: in DSPy signatures the answer comes last."""
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
    if reply is None:
        reply = next((n for n in reversed(outputs) if n != "reasoning"), outputs[0] if outputs else None)
    streamers = [
        name
        for name, predictor in program.loaded.module.named_predictors()
        if reply is not None and reply in predictor.signature.output_fields
    ]
    return ChatShape(texts[0], history, reply, streamers[-1] if streamers else None)


# --- responses ----------------------------------------------------------------------------------
def openai_usage(usage: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Tokens summed over every LM the program called."""
    return flat_usage(usage)


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(caller: Caller, error: ServeError) -> dict[str, Any]:
    """The one rendering of an error on this wire, OpenAI's error object: ``code`` is the native
    problem code, ``param`` the first bad field. Noted on the request's caller (once per error)."""
    caller.report(error)
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
    body = error_body(caller_of(request), error)
    return JSONResponse(body, status_code=error.status, headers=error.headers())


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
    replies = chat_replies(service)

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "dspy-serve"}

    @router.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        caller = caller_of(request)  # list only what the caller's key may call
        names = [n for n in service.programs if caller.may_call(n)]
        return JSONResponse({"object": "list", "data": [card(n) for n in names]})

    @router.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> JSONResponse:
        try:
            return JSONResponse(card(service.find(caller_of(request), model).name))
        except ServeError as exc:
            return error_response(request, exc)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        try:
            require_json(request)
            raw, caller = await request.body(), caller_of(request)
            try:
                data: Any = json.loads(raw)
            except ValueError:
                data = raw  # not JSON: pydantic says where
            named = data.get("model") if isinstance(data, dict) else None
            if isinstance(named, str):  # before anything about the body is told (#22)
                service.find(caller, named)
            body = _validated(ChatRequest, data, "Invalid request body")
            program = service.find(caller, body.model)
            shape = chat_shape(program, replies.get(program.name))
            inputs = shape.inputs(program, body.messages)
            options = body.options(service.settings.max_tokens_limit)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            completion = _Completion(program.name, shape, include_usage)
            if body.stream:
                call = service.stream(caller, program, inputs, options, wire="openai")
                headers = await call.admit()
                return EventStreamResponse(
                    call,
                    _ChunkEncoder(completion, caller),
                    heartbeat=service.settings.stream_heartbeat,
                    headers={**headers, **reuse_headers(caller)},
                )
            call = service.call(caller, program, inputs, options, wire="openai")
            headers = {**await call.admit(), CALL_ID_HEADER: call.call_id, VERSION_HEADER: call.version.name}
            result = await until_disconnected(request, call.result())
            return JSONResponse(completion.whole(result), headers={**headers, **reuse_headers(caller)})
        except Exception as exc:
            return error_response(request, exc)

    return router


def chat_replies(service: Service) -> dict[str, str]:
    """``--chat-reply NAME=FIELD`` per program, checked when the app is built: a name that is not
    served or a field that is not a ``str`` output stops the start-up."""
    replies: dict[str, str] = {}
    for spec in service.settings.chat_replies:
        name, sep, field = (part.strip() for part in spec.partition("="))
        program = service.programs.get(name)
        if not sep or program is None:
            served = ", ".join(service.programs)
            raise ValueError(f"chat reply {spec!r}: write NAME=FIELD with NAME one of the programs: {served}")
        texts = [n for n, f in program.interface.outputs.model_fields.items() if f.annotation is str]
        if field not in texts:
            raise ValueError(
                f"chat reply {spec!r}: {name!r} has no str output {field!r}; its str outputs: "
                f"{', '.join(texts) or 'none'}"
            )
        replies[name] = field
    return replies


class _ChunkEncoder:
    """The reply field's tokens as ``chat.completion.chunk``s (never reasoning's), then the
    stop chunk (and usage when asked); a failure is an ``{"error": ...}`` line; always
    ``[DONE]`` last."""

    def __init__(self, completion: _Completion, caller: Caller) -> None:
        self._completion = completion
        self._caller = caller
        self._sent = ""

    def opening(self) -> bytes:
        return self._completion.chunk({"role": "assistant", "content": ""})

    def encode(self, event: StreamEvent) -> bytes:
        completion = self._completion
        if isinstance(event, Token):
            if not completion.shape.streams(event):
                return b""
            self._sent += event.chunk
            return completion.chunk({"content": event.chunk})
        if isinstance(event, Failed):
            return sse_data(error_body(self._caller, event.error))
        if not isinstance(event, Finished):
            return b""
        result = event.result
        content = completion.shape.content(result.outputs)
        rest = content[len(self._sent) :] if content.startswith(self._sent) else ""
        out = completion.chunk({"content": rest}) if rest else b""  # a cache hit, or an unstreamed reply
        out += completion.chunk({}, "stop", dspy_outputs=result.outputs)
        if completion.include_usage:
            out += completion.chunk(None, usage=openai_usage(result.usage))
        return out

    def closing(self) -> bytes:
        return _DONE
