"""Server-Sent Events for one program call.

Events (each ``data`` is one JSON object; schemas in OpenAPI):

- ``token``: ``{"predictor", "field", "chunk"}``, for every ``str`` output field of every
  predictor, as the LM produces it. Other types arrive whole in ``prediction``.
- ``status``: ``{"message"}``, progress ("Running rewrite...", tool calls).
- ``prediction``: the same body as ``/invoke``'s response; always the last event on success.
- ``error``: a problem+json body; the stream then ends.

A comment line (``: ping``) is sent whenever nothing else was for ``heartbeat`` seconds, so
proxies keep the connection open. When the client goes away, the program is cancelled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, ClassVar

import anyio
import dspy
from dspy.streaming import StatusMessageProvider, StreamListener
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = [
    "STREAM_DOC",
    "EventStreamResponse",
    "JsonStringDecoder",
    "ProgressMessages",
    "listeners_for",
    "sse_event",
]

STREAM_DOC = (
    "Server-Sent Events: `token` ({predictor, field, chunk}) for each `str` output field as the LM "
    "writes it; `status` ({message}) as steps run; then `prediction` (the /invoke body) or `error` "
    "(problem+json). Non-`str` fields arrive whole in `prediction`. `: ping` comments keep idle "
    "connections open. Closing the connection cancels the program."
)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def listeners_for(module: dspy.Module) -> list[StreamListener]:
    """A fresh listener for every ``str`` output field of every predictor (names may repeat
    across predictors, so each listener is bound to its predictor)."""
    return [
        StreamListener(signature_field_name=field, predict=predictor, predict_name=name)
        for name, predictor in module.named_predictors()
        for field, info in predictor.signature.output_fields.items()
        if info.annotation is str
    ]


class ProgressMessages(StatusMessageProvider):
    """Say which step of the program is running, by the predictor's attribute name."""

    def __init__(self, module: dspy.Module) -> None:
        self._names = {id(predictor): name for name, predictor in module.named_predictors()}

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        name = self._names.get(id(instance))
        if name is None:
            return None
        return "Running..." if name == "self" else f"Running {name}..."


class JsonStringDecoder:
    """Turn the raw JSON text of a string value, fed in arbitrary pieces, into its characters.

    Under JSONAdapter, DSPy streams a field as the LM writes it: ``"Paris is \\"big\\""``,
    quotes and escapes included. Callers want the text, so it is decoded here, holding back a
    piece only while an escape sequence is split across chunks.
    """

    _ESCAPES: ClassVar[dict[str, str]] = {
        '"': '"',
        "\\": "\\",
        "/": "/",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
    }

    def __init__(self) -> None:
        self._pending = ""
        self._opened = False
        self._closed = False

    def feed(self, raw: str) -> str:
        text, out, i = self._pending + raw, [], 0
        self._pending = ""
        while i < len(text) and not self._closed:
            char = text[i]
            if not self._opened:
                self._opened = char == '"'
                i += 1
            elif char == '"':
                self._closed = True
            elif char != "\\":
                out.append(char)
                i += 1
            elif i + 1 >= len(text):
                self._pending = text[i:]
                break
            elif text[i + 1] == "u":
                if i + 6 > len(text):
                    self._pending = text[i:]
                    break
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
            else:
                out.append(self._ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
        return "".join(out)


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class EventStreamResponse(Response):
    """Stream the events a producer yields, with heartbeats, stopping it if the client leaves.

    The producer runs in its own task and is iterated to its end there, so its cancel scopes
    and context variables never cross a ``yield`` into another task.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: Callable[[], AsyncGenerator[bytes, None]],
        *,
        heartbeat: float,
        timeout: float,
        on_timeout: Callable[[], bytes],
        headers: dict[str, str] | None = None,
    ) -> None:
        # Like StreamingResponse: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({**STREAM_HEADERS, **(headers or {})})
        self._events = events
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._on_timeout = on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[bytes](16)

        async def produce() -> None:
            async with send_stream:
                # The deadline lives here, outside the producer: a cancel scope must not span a yield.
                with anyio.move_on_after(self._timeout) as deadline:
                    async with aclosing(self._events()) as events:
                        async for event in events:
                            await send_stream.send(event)
                if deadline.cancelled_caught:
                    await send_stream.send(self._on_timeout())

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect)
            group.start_soon(produce)
            async with receive_stream:
                while True:
                    with anyio.move_on_after(self._heartbeat) as idle:
                        try:
                            chunk = await receive_stream.receive()
                        except anyio.EndOfStream:
                            break
                    if idle.cancelled_caught:
                        chunk = b": ping\n\n"
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()
