"""The embedded model on xllamacpp: llama.cpp's own server code in-process, from a prebuilt wheel.

``xllamacpp.Server`` takes OpenAI-style chat bodies and answers with dicts; errors come back as
``{"error": {"type": ...}}`` rather than exceptions, and streaming is by callback. Three
things are shaped here:

- **No open network port.** The server always starts an HTTP listener beside its Python API
  (by default on 127.0.0.1, a random port, no key: any local user could use the model, read
  ``/slots``...). It is bound instead to a Unix socket in a private 0700 temporary directory,
  with a random API key on top, and its optional endpoints (slots, metrics, props) are off.
  On Windows, where there is no such socket, it stays on 127.0.0.1 with the random key.
  [`test_local_lm::test_xllamacpp_opens_no_network_port`]
- **Streaming by callback, consumed as a generator.** The blocking call runs in its own thread
  and hands chunks over a queue; closing the generator makes the next callback return True,
  which stops the generation at the next token.
- **Sampling defaults of llama-cpp-python** (temperature 0.2), so both runtimes answer alike.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

from dspy._vendor.lm15.types import StreamEvent
from dspy.lm15 import (
    ContextLengthError,
    InvalidRequestError,
    Request,
    Response,
    ServerError,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    Usage,
)

from dspy_serve.lm.local import INSTALL_HINT, LocalEngine, LocalModelUnavailable, _finish, completion_response

__all__ = ["XLlamaCppEngine"]

_PROVIDER = "local"
_END = object()
# llama-cpp-python's sampling knob names that llama.cpp's server spells differently.
_RENAMED = {"mirostat_mode": "mirostat"}


class _Server:
    """An ``xllamacpp.Server`` and the private directory of its socket."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        if importlib.util.find_spec("xllamacpp") is None:
            raise LocalModelUnavailable(f"xllamacpp is not installed. {INSTALL_HINT}")
        try:
            import xllamacpp
        except (ImportError, OSError) as exc:
            raise LocalModelUnavailable(f"xllamacpp failed to load ({exc}). {INSTALL_HINT}") from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1  # one generation at a time, as on llama-cpp-python
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.sampling.temp = 0.2
        params.verbosity = 0  # quiet: llama.cpp logs every request otherwise
        params.warmup = False  # a 135M model needs none; saves a second of startup
        params.endpoint_slots = params.endpoint_metrics = params.endpoint_props = False
        params.ui = False
        params.api_keys = [secrets.token_urlsafe(32)]
        self.socket_dir: str | None = None
        if sys.platform != "win32":
            self.socket_dir = tempfile.mkdtemp(prefix="dspy-serve-llama-")  # mode 0700
            # Removed at interpreter exit too, for a model its owner never closed.
            weakref.finalize(self, shutil.rmtree, self.socket_dir, True)
            params.hostnames = [os.path.join(self.socket_dir, "llama.sock")]
        else:
            params.hostnames = ["127.0.0.1"]
        try:
            self.server: Any = xllamacpp.Server(params)
        except Exception:
            self._remove_socket_dir()
            raise

    @property
    def listening_address(self) -> str:
        return str(self.server.listening_address) if self.server is not None else ""

    def close(self) -> None:
        self.server = None  # its destructor stops llama.cpp's loop and listener
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def _error(body: dict[str, Any]) -> Exception:
    """llama.cpp's error body as the canonical lm15 class DSPy maps to its own errors."""
    error = body.get("error") or {}
    message = str(error.get("message") or error or body)
    kind = error.get("type")
    cls: Any = ServerError
    if kind == "exceed_context_size_error":
        cls = ContextLengthError
    elif kind in ("invalid_request_error", "not_supported_error") or error.get("code") == 400:
        cls = InvalidRequestError
    exc: Exception = cls(message, provider=_PROVIDER)
    return exc


class XLlamaCppEngine(LocalEngine):
    """Synchronous engine over a process-shared ``xllamacpp.Server``; one generation at a time."""

    runtime = "xllamacpp"

    def _open(self) -> Any:
        return _Server(self.model_path, self.n_ctx, self.n_threads)

    def body(self, request: Request, *, stream: bool = False) -> dict[str, Any]:
        body = {_RENAMED.get(key, key): value for key, value in self.chat_kwargs(request).items()}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # a last chunk with the token counts
        return body

    def _call(self, body: dict[str, Any], callback: Any = None) -> Any:
        server = self._handle().server
        try:
            return (
                server.handle_chat_completions(body)
                if callback is None
                else (server.handle_chat_completions(body, callback))
            )
        except ValueError as exc:  # a schema or template it cannot turn into a grammar
            raise InvalidRequestError(str(exc), provider=_PROVIDER) from exc

    def complete(self, request: Request) -> Response:
        body = self.body(request)
        with self._model.lock:
            out = self._call(body)
        if "error" in out or "choices" not in out:
            raise _error(out)
        return completion_response(out, request.model)

    def stream(self, request: Request) -> Generator[StreamEvent, None, None]:
        """Validate now; generate lazily, holding the model lock until the stream ends or is closed."""
        return self._events(request, self.body(request, stream=True))

    def _events(self, request: Request, body: dict[str, Any]) -> Generator[StreamEvent, None, None]:
        with self._model.lock:
            chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
            stop = threading.Event()

            def on_chunk(chunk: dict[str, Any]) -> bool:
                chunks.put(chunk)
                return stop.is_set()  # True stops the generation

            def produce() -> None:
                try:
                    self._call(body, on_chunk)
                except Exception as exc:  # handed to the consumer, raised there
                    chunks.put(exc)
                finally:
                    chunks.put(_END)

            worker = threading.Thread(target=produce, name="xllamacpp-stream", daemon=True)
            worker.start()
            try:
                yield from self._read(request, chunks)
            finally:
                stop.set()
                worker.join()

    def _read(self, request: Request, chunks: queue.SimpleQueue[Any]) -> Generator[StreamEvent, None, None]:
        started = emitted = False
        finish: str | None = None
        usage: dict[str, Any] = {}
        timings: dict[str, Any] = {}
        while (chunk := chunks.get()) is not _END:
            if isinstance(chunk, Exception):
                raise chunk
            if "error" in chunk:
                raise _error(chunk)
            if not started:
                started = True
                yield StreamStartEvent(id=chunk.get("id"), model=request.model)
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices") or ():
                if text := (choice.get("delta") or {}).get("content"):
                    emitted = True
                    yield StreamDeltaEvent(delta=TextDelta(text=text))
                finish = choice.get("finish_reason") or finish
        if not started:
            yield StreamStartEvent(model=request.model)
        if not emitted:  # a Response needs one part, even if empty
            yield StreamDeltaEvent(delta=TextDelta(text=""))
        # usage comes with include_usage; timings (prompt_n counts only the uncached part) otherwise.
        prompt = usage.get("prompt_tokens")
        if prompt is None and timings:
            prompt = timings.get("cache_n", 0) + timings.get("prompt_n", 0)
        output = usage.get("completion_tokens", timings.get("predicted_n"))
        yield StreamEndEvent(
            finish_reason=_finish(finish), usage=Usage(input_tokens=prompt, output_tokens=output)
        )
