"""A fake OpenAI-compatible chat-completions server for tests and benchmarks.

It runs uvicorn in a background thread on ``127.0.0.1`` (ephemeral port), so a
real ``dspy.LM`` exercises its whole HTTP path (lm15 native engine or LiteLLM)
with no network and no model::

    from tests.support.dspy_prompts import prompt_text
    from tests.support.fake_lm import FakeLM, Hang, RateLimit

    with FakeLM() as fake:
        lm = dspy.LM("openai/fake-model", api_base=fake.base_url, api_key="fake", cache=False)
        fake.answers = {"answer": "Paris"}     # field values, or a callable(body) -> dict
        fake.push(RateLimit(retry_after=0.1))  # the next request only (FIFO queue)
        fake.when("Spain", Hang(), times=1)    # by prompt substring, checked before the queue
        with dspy.context(lm=lm):
            dspy.Predict("question -> answer")(question="Capital of France?")  # 429, retried: "Paris"
        assert fake.requests_started == 2 and "France" in prompt_text(fake.last_request)

By default it answers what the prompt asks for: it reads the output fields (and
their type / JSON-schema notes) that DSPy's ChatAdapter and JSONAdapter put in
the system message and replies in ``[[ ## field ## ]]`` form, as a JSON object,
or per ``response_format``'s JSON schema. ``stream: true`` is answered as SSE
chunks of ``chunk_chars`` characters (or of the sizes ``chunk_sizes`` lists, cycled),
``chunk_delay`` seconds apart.

The model name matters to DSPy, not to this server: an unknown name such as
``openai/fake-model`` has no capability metadata, so JSONAdapter asks for JSON in
the prompt only; a known one such as ``openai/gpt-4o-mini`` makes it send a
``json_schema`` ``response_format`` (structured outputs).

Importing this module sets ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (unless already
set): DSPy and LiteLLM otherwise fetch a model-metadata map from GitHub on first
use, and tests must only talk to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.support.dspy_prompts import Body, compose_answer, message_text, prompt_text

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Fields = Mapping[str, Any] | Callable[[Body], Mapping[str, Any]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ── Scripted behaviours ─────────────────────────────────────────────────────


@dataclass(frozen=True)
class Answer:
    """A normal answer; ``fields`` overrides field values, ``text`` replaces the whole content."""

    fields: Fields | None = None
    text: str | None = None


@dataclass(frozen=True)
class Slow:
    """A normal answer after an extra ``delay`` seconds (on top of ``FakeLM.latency``)."""

    delay: float
    fields: Fields | None = None


@dataclass(frozen=True)
class Malformed:
    """HTTP 200 whose content neither ChatAdapter nor JSONAdapter can parse."""

    text: str = "I cannot comply."


@dataclass(frozen=True)
class RateLimit:
    """HTTP 429 in OpenAI's error shape, with ``Retry-After`` when ``retry_after`` is set."""

    retry_after: float | None = None


@dataclass(frozen=True)
class ServerError:
    """An HTTP 5xx in OpenAI's error shape."""

    status: int = 500
    message: str = "The fake server had an error while processing your request."


@dataclass(frozen=True)
class AuthFailure:
    """HTTP 401 ``invalid_api_key``."""


@dataclass(frozen=True)
class Hang:
    """Never answer (a stream sends its headers, then nothing) until the client leaves or the server stops."""


Behaviour = Answer | Slow | Malformed | RateLimit | ServerError | AuthFailure | Hang
_BEHAVIOURS = (Answer, Slow, Malformed, RateLimit, ServerError, AuthFailure, Hang)


@dataclass
class _Rule:
    substring: str
    behaviour: Behaviour
    remaining: int | None


def _resolve(fields: Fields | None, body: Body) -> dict[str, Any]:
    if fields is None:
        return {}
    return dict(fields(body) if callable(fields) else fields)


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _usage(body: Body, content: str) -> dict[str, int]:
    prompt, completion = _tokens(prompt_text(body)), _tokens(content)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ── HTTP plumbing ───────────────────────────────────────────────────────────

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _Exchange:
    """One request/response whose waits end early when the client hangs up or the server stops."""

    def __init__(self, receive: Receive, send: Send, on_settle: Callable[[str], None]) -> None:
        self.send = send
        self.abort = asyncio.Event()
        self.outcome: str | None = None  # "completed", "disconnected" or "failed", recorded once
        self._on_settle = on_settle
        self._watcher = asyncio.create_task(self._watch(receive))

    @property
    def disconnected(self) -> bool:
        return self.outcome == "disconnected"

    def settle(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._on_settle(outcome)

    async def _watch(self, receive: Receive) -> None:
        # uvicorn also reports "disconnect" once the response is complete; settle() ignores that one.
        while (await receive())["type"] != "http.disconnect":
            pass
        self.settle("disconnected")
        self.abort.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (inf = until aborted); False if the exchange was aborted."""
        if seconds > 0 and not self.abort.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.abort.wait(), None if math.isinf(seconds) else seconds)
        return not self.abort.is_set()

    async def json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self.settle("completed")  # before the client can see the end, so tests never race the counter
        await _send_json(self.send, status, payload, headers)

    async def start_stream(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": _SSE})

    async def body(self, data: bytes, *, last: bool = False) -> None:
        if last:
            self.settle("completed")
        await self.send({"type": "http.response.body", "body": data, "more_body": not last})

    def close(self) -> None:
        self._watcher.cancel()


async def _read_body(receive: Receive) -> bytes | None:
    """The full request body, or None if the client left before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": [_JSON, *extra]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def _error(message: str, kind: str = "server_error", code: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error_reply(behaviour: Behaviour) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """(status, body, headers) for the behaviours that answer with an HTTP error."""
    if isinstance(behaviour, RateLimit):
        headers = {} if behaviour.retry_after is None else {"Retry-After": f"{behaviour.retry_after:g}"}
        return 429, _error("Rate limit reached (fake).", "rate_limit_error", "rate_limit_exceeded"), headers
    if isinstance(behaviour, ServerError):
        return behaviour.status, _error(behaviour.message), {}
    if isinstance(behaviour, AuthFailure):
        return 401, _error("Incorrect API key (fake).", "invalid_request_error", "invalid_api_key"), {}
    return None


# ── The server ──────────────────────────────────────────────────────────────


class FakeLM:
    """A scriptable OpenAI-compatible server; use as a context manager or via ``start()``/``stop()``.

    ``latency``, ``chunk_delay``, ``chunk_chars``, ``chunk_sizes`` and ``answers`` may be changed
    while it runs.
    Counters and ``requests`` are safe to read from any thread.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        chunk_chars: int = 4,
        answers: Fields | None = None,
    ) -> None:
        self._defaults = (latency, chunk_delay, chunk_chars, answers)
        self.latency, self.chunk_delay, self.chunk_chars, self.answers = self._defaults
        # Sizes of successive streamed chunks, cycled (a stream split unevenly); None: chunk_chars.
        self.chunk_sizes: Sequence[int] | None = None
        self._lock = threading.Lock()
        self._queue: deque[Behaviour] = deque()
        self._rules: list[_Rule] = []
        self._ids = itertools.count(1)
        self.in_flight = 0
        self._reset_stats()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exchanges: set[_Exchange] = set()
        self._stopping = False
        self._port: int | None = None

    # lifecycle

    def __enter__(self) -> FakeLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 5.0) -> FakeLM:
        """Bind an ephemeral 127.0.0.1 port and serve from a daemon thread; returns self."""
        if self._thread is not None:
            return self
        sock = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )  # TCP: asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        # log_config=None: leave the host's logging alone; the bound method needs an explicit asgi3.
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            http="h11",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = server = uvicorn.Server(config)
        self._stopping = False
        self._thread = thread = threading.Thread(target=self._run, args=(server, sock), daemon=True)
        thread.start()
        self.wait_for(lambda: server.started or not thread.is_alive(), timeout)
        if not server.started:
            self.stop()
            raise RuntimeError("FakeLM server did not start")
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(main())

    def stop(self, timeout: float = 2.0) -> None:
        """Abort hanging/streaming requests and shut down; idempotent."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._abort_all)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = self._loop = None

    def _abort_all(self) -> None:
        self._stopping = True
        for exchange in self._exchanges:
            exchange.abort.set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLM is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The ``api_base`` for ``dspy.LM``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # scripting

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, one each, in order (after ``when`` rules)."""
        for behaviour in behaviours:
            _check_behaviour(behaviour)
        with self._lock:
            self._queue.extend(behaviours)

    def when(self, substring: str, behaviour: Behaviour, times: int | None = None) -> None:
        """Apply ``behaviour`` to requests whose messages contain ``substring`` (``times=None``: always)."""
        _check_behaviour(behaviour)
        with self._lock:
            self._rules.append(_Rule(substring, behaviour, times))

    def reset(self) -> None:
        """Forget stats and scripts and restore the constructor's knobs (for tests sharing one server)."""
        with self._lock:
            self._queue.clear()
            self._rules.clear()
            self._reset_stats()
        self.latency, self.chunk_delay, self.chunk_chars, self.answers = self._defaults
        self.chunk_sizes = None

    def _reset_stats(self) -> None:
        # Written under the lock on the server thread; plain reads are atomic. ``in_flight`` is a live gauge,
        # not a statistic, so a reset keeps it: requests still open count down normally.
        self.requests_started = 0
        self.requests_completed = 0  # response (success or error) fully sent
        self.requests_disconnected = 0  # client hung up before the response finished
        self.peak_in_flight = self.in_flight  # most chat requests open at once
        self.requests: list[Body] = []  # received JSON bodies, oldest first

    @property
    def last_request(self) -> Body:
        with self._lock:
            if not self.requests:
                raise LookupError("FakeLM has received no chat requests")
            return self.requests[-1]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0, interval: float = 0.005) -> bool:
        """Poll ``predicate`` until true or ``timeout``; the counters update on the server thread."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True

    # request handling (server thread)

    def _admit(self, body: Body) -> Behaviour:
        """Record a request and choose its behaviour: first matching rule, else the queue, else Answer()."""
        text = [message_text(m) for m in body.get("messages") or [] if isinstance(m, dict)]
        with self._lock:
            self.requests.append(body)
            self.requests_started += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            for rule in self._rules:
                if any(rule.substring in t for t in text):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule.behaviour
            return self._queue.popleft() if self._queue else Answer()

    def _settle(self, outcome: str) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests_completed += outcome == "completed"
            self.requests_disconnected += outcome == "disconnected"

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path in ("/v1/models", "/models"):
            model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake-lm"}
            return await _send_json(send, 200, {"object": "list", "data": [model]})
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            return await _send_json(
                send, 404, _error(f"No route {path}", "invalid_request_error", "not_found")
            )
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            return await _send_json(send, 400, _error(f"Invalid JSON body: {exc}", "invalid_request_error"))
        behaviour = self._admit(body)
        exchange = _Exchange(receive, send, self._settle)
        self._exchanges.add(exchange)
        if self._stopping:
            exchange.abort.set()
        try:
            await self._respond(exchange, body, behaviour)
        finally:
            exchange.close()
            exchange.settle("failed")
            self._exchanges.discard(exchange)

    async def _respond(self, exchange: _Exchange, body: Body, behaviour: Behaviour) -> None:
        stream = bool(body.get("stream"))
        if not await exchange.pause(self.latency):
            return await self._abandon(exchange, started=False)
        if error := _error_reply(behaviour):
            return await exchange.json(*error)
        if isinstance(behaviour, Hang):
            if stream:
                await exchange.start_stream()
            await exchange.pause(math.inf)
            return await self._abandon(exchange, started=stream)
        if isinstance(behaviour, Slow) and not await exchange.pause(behaviour.delay):
            return await self._abandon(exchange, started=False)
        content = self._content(body, behaviour)
        if stream:
            return await self._stream(exchange, body, content)
        n = max(1, int(body.get("n") or 1))
        message = {"role": "assistant", "content": content}
        choices = [{"index": i, "message": message, "finish_reason": "stop"} for i in range(n)]
        usage = _usage(body, content)
        await exchange.json(
            200, {**self._envelope(body, "chat.completion"), "choices": choices, "usage": usage}
        )

    def _content(self, body: Body, behaviour: Behaviour) -> str:
        if isinstance(behaviour, Malformed):
            return behaviour.text
        if isinstance(behaviour, Answer) and behaviour.text is not None:
            return behaviour.text
        overrides = _resolve(self.answers, body)
        if isinstance(behaviour, (Answer, Slow)):
            overrides.update(_resolve(behaviour.fields, body))
        return compose_answer(body, overrides)

    def _envelope(self, body: Body, kind: str) -> dict[str, Any]:
        model = str(body.get("model") or "fake-model")
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": kind,
            "created": int(time.time()),
            "model": model,
        }

    async def _stream(self, exchange: _Exchange, body: Body, content: str) -> None:
        envelope = self._envelope(body, "chat.completion.chunk")

        def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + json.dumps({**envelope, "choices": [choice]}).encode() + b"\n\n"

        await exchange.start_stream()
        await exchange.body(frame({"role": "assistant", "content": ""}))
        sizes = itertools.cycle([max(1, size) for size in self.chunk_sizes or [self.chunk_chars]])
        offset = 0
        while offset < len(content):
            if offset and not await exchange.pause(self.chunk_delay):
                return await self._abandon(exchange, started=True)
            size = next(sizes)
            await exchange.body(frame({"content": content[offset : offset + size]}))
            offset += size
        await exchange.body(frame({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**envelope, "choices": [], "usage": _usage(body, content)}
            await exchange.body(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await exchange.body(b"data: [DONE]\n\n", last=True)

    async def _abandon(self, exchange: _Exchange, *, started: bool) -> None:
        """End an aborted exchange: nothing to say to a gone client; a 503 (or a cut stream) on shutdown."""
        if exchange.disconnected:
            return
        if started:
            await exchange.body(b"", last=True)
        else:
            await exchange.json(503, _error("The fake server is shutting down.", code="shutting_down"))


def _check_behaviour(behaviour: object) -> None:
    if not isinstance(behaviour, _BEHAVIOURS):
        raise TypeError(f"expected a behaviour instance such as Answer() or Hang(), got {behaviour!r}")
