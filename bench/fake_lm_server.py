"""tests.support.fake_lm.FakeLM in a process of its own, so its CPU is not the measured process's.

    python -m bench.fake_lm_server --latency 0.1 [--chunk-delay 0.02 --answer-chars 160]

Prints ``{"port": N, "pid": P}`` on stdout once listening on 127.0.0.1, then serves until
SIGTERM/SIGINT (or, with ``--exit-on-stdin-eof``, until its standard input closes). Besides the
OpenAI routes it answers:

- ``GET /bench/stats``: FakeLM's counters, and for each finished stream the wall-clock time
  (``time.time()``) and text of every content chunk it sent;
- ``POST /bench/reset``: forget counters and streams (between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tests.support.fake_lm import FakeLM

__all__ = ["BenchFakeLM", "main"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

_SSE = b"text/event-stream"


def _chunk_text(frame: bytes) -> str:
    """The ``delta.content`` of one OpenAI SSE frame ('' for role, finish, usage or [DONE] frames)."""
    text = ""
    for line in frame.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            text += (choices[0].get("delta") or {}).get("content") or ""
    return text


class BenchFakeLM(FakeLM):
    """FakeLM plus the /bench routes and send-time stamps of streamed chunks."""

    def __init__(self, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.streams: list[list[tuple[float, str]]] = []

    def start(self, timeout: float = 5.0) -> BenchFakeLM:
        super().start(timeout)
        self._enable_nodelay()
        return self

    def _enable_nodelay(self) -> None:
        # FakeLM binds its socket with proto=0, so asyncio never sets TCP_NODELAY on accepted
        # connections: with Nagle on, a response's body waits for the ACK of its headers, which
        # the client delays by ~40 ms on a reused connection. Accepted sockets inherit the option
        # from the listening socket on Linux, so set it there.
        server = getattr(self, "_server", None)
        for listener in getattr(server, "servers", []):
            for sock in listener.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _app(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/bench/"):
            return await self._control(scope["method"], scope["path"], send)
        chunks: list[tuple[float, str]] = []
        streaming = False

        async def timed_send(message: Message) -> None:
            nonlocal streaming
            await send(message)
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                streaming = headers.get(b"content-type", b"").startswith(_SSE)
            elif (
                streaming
                and message["type"] == "http.response.body"
                and (text := _chunk_text(message.get("body", b"")))
            ):
                chunks.append((time.time(), text))

        await super()._app(scope, receive, timed_send)
        if chunks:
            self.streams.append(chunks)

    async def _control(self, method: str, path: str, send: Send) -> None:
        if method == "GET" and path == "/bench/stats":
            status, payload = 200, self.stats()
        elif method == "POST" and path == "/bench/reset":
            self.reset()
            self.streams.clear()
            status, payload = 200, {"reset": True}
        else:
            status, payload = 404, {"error": path}
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "requests_started": self.requests_started,
            "requests_completed": self.requests_completed,
            "requests_disconnected": self.requests_disconnected,
            "peak_in_flight": self.peak_in_flight,
            "streams": self.streams,
        }


def _answer(chars: int) -> str:
    sentence = "Paris is the capital and most populous city of France, on the river Seine. "
    return (sentence * (chars // len(sentence) + 1))[:chars].strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--chunk-chars", type=int, default=4, help="characters per streamed chunk")
    parser.add_argument(
        "--answer-chars", type=int, default=0, help="length of the `answer` field (0: FakeLM's)"
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input closes")
    args = parser.parse_args(argv)
    answers = {"answer": _answer(args.answer_chars)} if args.answer_chars else None
    fake = BenchFakeLM(
        latency=args.latency, chunk_delay=args.chunk_delay, chunk_chars=args.chunk_chars, answers=answers
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_on_stdin_eof:

        def watch_stdin() -> None:
            sys.stdin.read()
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"port": fake.port, "pid": os.getpid()}), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
