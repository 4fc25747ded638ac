"""Run one program call without ever blocking the event loop.

Programs with a native ``aforward`` (every DSPy built-in, and custom modules that define one)
are awaited through ``acall``. Sync-only programs run in a bounded thread pool of our own,
sized from the server's in-flight limit rather than DSPy's global default of 8, with the
request's DSPy context copied into the thread. A sync call cannot be interrupted mid-flight:
once its request is cancelled or times out it stops at its next LM call.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import dspy
from dspy.streaming import StatusMessage, StreamResponse
from pydantic import BaseModel

from dspy_serve.errors import InvalidProgramOutput, note_usage
from dspy_serve.serving.call_scope import CallScope, enter_scope
from dspy_serve.serving.loader import LoadedProgram
from dspy_serve.serving.schema import ProgramInterface
from dspy_serve.serving.wire import to_wire

__all__ = ["CallResult", "ProgramRunner", "has_native_async"]

# Per-request DSPy settings that keep a long-lived server's memory flat and its callers apart.
SERVER_SAFE_DSPY_SETTINGS: dict[str, Any] = {
    "disable_history": True,
    "max_history_size": 0,
    "max_trace_size": 0,
    "provide_traceback": False,
}


@dataclass(frozen=True)
class CallResult:
    outputs: dict[str, Any]
    usage: dict[str, dict[str, Any]]
    model: str
    lm_calls: dict[str, int] = field(default_factory=dict)
    cache_hits: dict[str, int] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


def has_native_async(module: dspy.Module) -> bool:
    """True when ``aforward`` implements the same logic as ``forward``.

    A subclass that overrides only ``forward`` of a built-in (say ChainOfThought) inherits an
    ``aforward`` that would skip the override, so it must run on the sync path.
    """
    mro = type(module).__mro__
    forward_owner = next((i for i, cls in enumerate(mro) if "forward" in vars(cls)), len(mro))
    aforward_owner = next((i for i, cls in enumerate(mro) if "aforward" in vars(cls)), len(mro))
    return aforward_owner <= forward_owner and aforward_owner < len(mro)


class ProgramRunner:
    """Calls one program under a request's LM, adapter and scope, and collects its usage."""

    def __init__(
        self,
        program: LoadedProgram,
        interface: ProgramInterface,
        threads: anyio.CapacityLimiter,
        adapter: dspy.Adapter | None,
    ) -> None:
        self.program = program
        self.interface = interface
        self.native_async = has_native_async(program.module)
        self._threads = threads
        self._adapter = adapter

    def _settings(self, lm: dspy.BaseLM) -> dict[str, Any]:
        settings: dict[str, Any] = {"lm": lm, **SERVER_SAFE_DSPY_SETTINGS}
        if self._adapter is not None:
            settings["adapter"] = self._adapter
        return settings

    async def call(self, inputs: dict[str, Any], *, lm: dspy.BaseLM, scope: CallScope) -> CallResult:
        with enter_scope(scope), dspy.context(**self._settings(lm)), dspy.track_usage() as tracker:
            try:
                if self.native_async:
                    prediction = await self.program.module.acall(**inputs)
                else:
                    prediction = await self._call_in_thread(**inputs)
            except BaseException as exc:
                scope.cancel()  # a worker thread still running stops at its next LM call
                note_usage(exc, tracker.get_total_tokens())
                raise
            finally:
                scope.usage = tracker.get_total_tokens()  # charged whatever the outcome
            return _result(self._outputs(prediction), tracker, lm, scope)

    async def stream(
        self, inputs: dict[str, Any], *, lm: dspy.BaseLM, scope: CallScope
    ) -> AsyncGenerator[StreamResponse | StatusMessage | CallResult, None]:
        """Token chunks and status messages as the program runs, then its :class:`CallResult`.

        Listeners are made per call: DSPy's StreamListener keeps state and streams nothing
        after its first use (dspy#8425).
        """
        from dspy_serve.serving.streaming import JsonStringDecoder, ProgressMessages, listeners_for

        module = self.program.module
        target = _InThread(module, module.acall if self.native_async else self._call_in_thread)
        streamer = dspy.streamify(
            target,
            status_message_provider=getattr(module, "serve_status_messages", None)
            or ProgressMessages(module),
            stream_listeners=listeners_for(module),
            is_async_program=True,
        )
        decoders: dict[tuple[str, str], JsonStringDecoder] | None = (
            {} if isinstance(self._adapter, dspy.JSONAdapter) else None
        )
        with enter_scope(scope), dspy.context(**self._settings(lm)), dspy.track_usage() as tracker:
            try:
                # Drained or closed here, in this task: streamify's generator holds a task group.
                async with aclosing(streamer(**inputs)) as items:
                    async for item in items:
                        if isinstance(item, dspy.Prediction):
                            final = _result(self._outputs(item), tracker, lm, scope)
                        elif isinstance(item, StreamResponse) and decoders is not None:
                            key = (item.predict_name, item.signature_field_name)
                            chunk = decoders.setdefault(key, JsonStringDecoder()).feed(item.chunk)
                            yield StreamResponse(
                                item.predict_name, item.signature_field_name, chunk, item.is_last_chunk
                            )
                        elif isinstance(item, (StreamResponse, StatusMessage)):
                            yield item
                yield final
            except BaseException as exc:
                scope.cancel()
                note_usage(exc, tracker.get_total_tokens())
                raise
            finally:
                scope.usage = tracker.get_total_tokens()  # charged whatever the outcome

    async def _call_in_thread(self, **inputs: Any) -> Any:
        # anyio copies the context (DSPy settings, usage tracker, call scope) into the worker
        # and lets DSPy's streaming reach back to the loop with anyio.from_thread.
        call = functools.partial(self.program.module, **inputs)
        return await anyio.to_thread.run_sync(call, limiter=self._threads, abandon_on_cancel=True)

    def _outputs(self, prediction: Any) -> dict[str, Any]:
        """The declared output fields of what the program returned, as the JSON their schema
        documents (nested Predictions, DSPy types, ...). A bare value (``return "Paris"``) is the
        one declared output."""
        fields = self.interface.outputs.model_fields
        if isinstance(prediction, _BareValue):
            prediction = prediction._value
        if isinstance(prediction, (dspy.Example, dict)):  # Prediction included
            present = prediction.keys()  # a Prediction is not a Mapping: `in` needs its keys
            values = {name: prediction[name] for name in fields if name in present}
        elif _carries_fields(prediction, fields):
            values = {name: getattr(prediction, name) for name in fields if hasattr(prediction, name)}
        elif len(fields) == 1:
            values = {next(iter(fields)): prediction}
        else:
            raise InvalidProgramOutput(
                f"The program returned a bare {type(prediction).__name__}, but it declares "
                f"{len(fields)} outputs ({', '.join(fields)}): return a dspy.Prediction with them.",
                errors=[{"loc": ["outputs"], "msg": "expected a dspy.Prediction", "type": "model_type"}],
            )
        return {name: to_wire(value) for name, value in values.items()}


def _carries_fields(value: Any, fields: Mapping[str, Any]) -> bool:
    """A returned pydantic model whose attributes are the declared outputs (not a DSPy type or a
    model that is itself the one output)."""
    return (
        isinstance(value, BaseModel)
        and not isinstance(value, dspy.Type)
        and all(hasattr(value, name) for name in fields)
    )


def _result(outputs: dict[str, Any], tracker: Any, lm: dspy.BaseLM, scope: CallScope) -> CallResult:
    """Outputs and accounting: LM calls that reported no usage were answered from the cache."""
    billed = {model: len(entries) for model, entries in tracker.usage_data.items()}
    calls = dict(scope.lm_calls)
    hits = {model: max(0, count - billed.get(model, 0)) for model, count in calls.items()}
    return CallResult(outputs, tracker.get_total_tokens(), lm.model, calls, hits)


class _InThread:
    """What ``dspy.streamify`` needs of a program: its predictors, and an ``acall`` (the module's
    own, or a sync-only module run in our threads) that always returns a Prediction, since
    streamify ends its stream only on one (a bare ``return "Paris"`` would hang it)."""

    def __init__(self, module: dspy.Module, run: Any) -> None:
        self._module = module
        self._run = run

    async def acall(self, **inputs: Any) -> dspy.Prediction:
        returned = await self._run(**inputs)
        return returned if isinstance(returned, dspy.Prediction) else _BareValue(returned)

    def named_predictors(self) -> Any:
        return self._module.named_predictors()


class _BareValue(dspy.Prediction):
    """A program's return value that is not a Prediction, carried through streamify as one."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self._value = value
