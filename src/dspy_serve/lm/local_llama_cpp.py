"""The embedded model on llama-cpp-python, built from source: the fallback runtime.

llama-cpp-python ships on PyPI as source only; scripts/install.sh builds it for CPUs that
xllamacpp's wheel cannot run on (lm/local_runtime.py). Its ``Llama`` is not thread-safe: every
call holds the shared model's lock.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator, Iterator
from typing import Any

from dspy._vendor.lm15.types import StreamEvent
from dspy.lm15 import (
    ContextLengthError,
    InvalidRequestError,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    Usage,
)

from dspy_serve.lm.local import LocalEngine, LocalModelUnavailable, _finish, completion_response

__all__ = ["LLAMA_CPP_HINT", "LlamaCppEngine"]

_PROVIDER = "local"
LLAMA_CPP_HINT = (
    "Build it for this CPU with bash scripts/install.sh runtime --with-llama-cpp, or with "
    "CMAKE_ARGS set to dspy_serve.lm.local_runtime.fallback_cmake_args() (GGML_NATIVE=OFF minus the "
    "instruction sets this CPU lacks; a native build can crash with 'Illegal instruction'): "
    "pip install --no-binary llama-cpp-python 'llama-cpp-python>=0.3.16,<0.4'"
)


def _open_llama(path: Any, n_ctx: int, n_threads: int) -> Any:
    """Import llama_cpp here, not at module import, and load the model quietly and offline."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelUnavailable(f"llama-cpp-python is not installed. {LLAMA_CPP_HINT}")
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise LocalModelUnavailable(f"llama-cpp-python failed to load ({exc}). {LLAMA_CPP_HINT}") from exc
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
    )


def _llama_error(exc: ValueError) -> Exception:
    """llama-cpp-python reports bad requests as ValueError; give DSPy the canonical class."""
    cls = ContextLengthError if "exceed context window" in str(exc) else InvalidRequestError
    error: Exception = cls(str(exc), provider=_PROVIDER)
    return error


class LlamaCppEngine(LocalEngine):
    """llama-cpp-python's ``Llama`` (built from source): the fallback runtime."""

    runtime = "llama-cpp"

    def _open(self) -> Any:
        return _open_llama(self.model_path, self.n_ctx, self.n_threads)

    def complete(self, request: Request) -> Response:
        kwargs = self.chat_kwargs(request)
        with self._model.lock:
            try:
                out = self._handle().create_chat_completion(**kwargs)
            except ValueError as exc:
                raise _llama_error(exc) from exc
        return completion_response(out, request.model)

    def stream(self, request: Request) -> Generator[StreamEvent, None, None]:
        """Validate now; generate lazily, holding the model lock until the stream ends or is closed."""
        return self._events(request, self.chat_kwargs(request))

    def _events(self, request: Request, kwargs: dict[str, Any]) -> Generator[StreamEvent, None, None]:
        with self._model.lock:
            llama = self._handle()
            chunks: Iterator[dict[str, Any]] | None = None
            prompt_tokens: int | None = None
            finish: str | None = None
            emitted = False
            try:
                chunks = llama.create_chat_completion(**kwargs, stream=True)
                for chunk in chunks:
                    if prompt_tokens is None:
                        # The first chunk arrives right after the prompt is evaluated, before the
                        # first sampled token is: n_tokens is then the prompt length.
                        prompt_tokens = llama.n_tokens
                        yield StreamStartEvent(id=chunk.get("id"), model=request.model)
                    choice = chunk["choices"][0]
                    if text := choice["delta"].get("content"):
                        emitted = True
                        yield StreamDeltaEvent(delta=TextDelta(text=text))
                    finish = choice.get("finish_reason") or finish
            except ValueError as exc:
                raise _llama_error(exc) from exc
            finally:
                getattr(chunks, "close", lambda: None)()
            if prompt_tokens is None:
                prompt_tokens = llama.n_tokens
                yield StreamStartEvent(model=request.model)
            if not emitted:  # a Response needs one part, even if empty
                yield StreamDeltaEvent(delta=TextDelta(text=""))
            # Every sampled token but a length-cut last one (or EOS) is evaluated into the context.
            output_tokens = max(llama.n_tokens - prompt_tokens + (finish == "length"), 0)
            yield StreamEndEvent(
                finish_reason=_finish(finish),
                usage=Usage(input_tokens=prompt_tokens, output_tokens=output_tokens),
            )
