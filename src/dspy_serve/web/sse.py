"""Server-Sent Events: one streamed call on the wire, in whichever encoding a front end speaks.

:class:`EventStreamResponse` runs an admitted :class:`~dspy_serve.serving.call.Call` (whose
deadline, span and accounts are its own) and writes what a :class:`StreamEncoder` makes of each
domain event it emits. ``/NAME/stream`` uses
:class:`ProgramEventEncoder`:

- ``token``: ``{"predictor", "field", "chunk"}``, for every ``str`` output field of every
  predictor, as the LM produces it. Other types arrive whole in ``prediction``.
- ``status``: ``{"message"}``, progress ("Running rewrite...", tool calls).
- ``prediction``: the same body as ``/invoke``'s response (:func:`~.envelopes.response_body`);
  always the last event on success.
- ``error``: a problem+json body; the stream then ends.

A comment line (``: ping``) is sent whenever nothing else was for ``heartbeat`` seconds, so
proxies keep the connection open. When the client goes away, the program is cancelled.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dspy_serve.serving.call import Call
from dspy_serve.serving.events import Finished, Status, StreamEvent, Token
from dspy_serve.web.envelopes import response_body
from dspy_serve.web.problems import problem_body

__all__ = [
    "CALL_ID_HEADER",
    "STREAM_DOC",
    "EventStreamResponse",
    "ProgramEventEncoder",
    "StreamEncoder",
    "sse_event",
]

STREAM_DOC = (
    "Server-Sent Events: `token` ({predictor, field, chunk}) for each `str` output field as the LM "
    "writes it; `status` ({message}) as steps run; then `prediction` (the /invoke body) or `error` "
    "(problem+json). Non-`str` fields arrive whole in `prediction`. `: ping` comments keep idle "
    "connections open. Closing the connection cancels the program."
)

CALL_ID_HEADER = "X-Call-Id"  # the server-minted id of the call (also `call_id` in the body)
VERSION_HEADER = "X-Program-Version"  # the program version that answered (also `version`)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


class StreamEncoder(Protocol):
    """A wire format for a streamed call: bytes before the first event, per event, after the last."""

    def opening(self) -> bytes: ...

    def encode(self, event: StreamEvent) -> bytes: ...

    def closing(self) -> bytes: ...


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class ProgramEventEncoder:
    """``/NAME/stream``'s events: token, status, then prediction or error (problem+json)."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._token_prefixes: dict[tuple[str, str], bytes] = {}

    def opening(self) -> bytes:
        return b""

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, Token):
            # The most frequent event: its constant part is made once per field.
            prefix = self._token_prefixes.get((event.predictor, event.field))
            if prefix is None:
                head = json.dumps(
                    {"predictor": event.predictor, "field": event.field},
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                prefix = self._token_prefixes[(event.predictor, event.field)] = (
                    f'event: token\ndata: {head[:-1]},"chunk":'.encode()
                )
            return prefix + json.dumps(event.chunk, ensure_ascii=False).encode() + b"}\n\n"
        if isinstance(event, Status):
            return sse_event("status", {"message": event.message})
        if isinstance(event, Finished):
            return sse_event(
                "prediction", response_body(event.result, event.call_id, self._call.version.name)
            )
        return sse_event("error", problem_body(self._call.caller, event.error))

    def closing(self) -> bytes:
        return b""


def _drain(queue: MemoryObjectReceiveStream[bytes]) -> list[bytes]:
    """What ``queue`` holds now, without waiting (none once its sender is done)."""
    items: list[bytes] = []
    while True:
        try:
            items.append(queue.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return items


class EventStreamResponse(Response):
    """Stream one admitted call's events, with heartbeats, stopping the call if the client leaves.

    The call runs to its end in a task of its own, pushing its encoded events through a small
    buffer, so its cancel scopes and context variables never cross into another task.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        call: Call,
        encoder: StreamEncoder,
        *,
        heartbeat: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Like StreamingResponse: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                **STREAM_HEADERS,
                **(headers or {}),
                CALL_ID_HEADER: call.call_id,
                VERSION_HEADER: call.version.name,
            }
        )
        self._call = call
        self._encoder = encoder
        self._heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[bytes](16)
        call, encoder = self._call, self._encoder

        async def emit(event: StreamEvent) -> None:
            if data := encoder.encode(event):  # b"": nothing to say on this wire
                try:
                    send_stream.send_nowait(data)  # no turn of the loop per chunk
                except anyio.WouldBlock:
                    await send_stream.send(data)

        async def produce() -> None:
            async with send_stream:
                if opening := encoder.opening():
                    await send_stream.send(opening)
                await call.stream(emit)
                if closing := encoder.closing():
                    await send_stream.send(closing)

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
                    # Events already queued go out at once, together (a busy server writes fewer,
                    # larger pieces); only an empty queue is waited on, under the heartbeat.
                    queued = _drain(receive_stream)
                    if queued:
                        chunk = b"".join(queued) if len(queued) > 1 else queued[0]
                    else:
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
