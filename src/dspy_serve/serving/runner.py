"""Run one program call without ever blocking the event loop.

Programs with a native ``aforward`` (every DSPy built-in, and custom modules that define one)
are awaited through ``acall``; their sync tools run in worker threads
(:mod:`dspy_serve.serving.offload`). Sync-only programs, and programs with callbacks of their
own, run in a bounded thread pool of our own, sized from the server's in-flight limit rather
than DSPy's global default of 8, with the request's DSPy context copied into the thread; their
LM calls run on the event loop (see :class:`~dspy_serve.lm.registry.ServingLM`), so a
cancelled or timed-out request closes its LM connection whichever path it took.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import dspy
from dspy.streaming import StatusMessage, StreamResponse
from dspy.utils.usage_tracker import UsageTracker
from pydantic import BaseModel

from dspy_serve.call_scope import SCOPE_SETTING, CallScope, enter_scope
from dspy_serve.errors import InvalidProgramOutput, note_usage
from dspy_serve.serving.dspy_json import to_wire
from dspy_serve.serving.loader import LoadedProgram
from dspy_serve.serving.offload import has_own_callbacks, keep_tools_off_loop
from dspy_serve.serving.schema import ProgramInterface

if TYPE_CHECKING:
    from dspy_serve.serving.streaming import PredictorNames

__all__ = ["CallResult", "ProgramRunner", "has_native_async"]

# Process-wide DSPy settings that keep a long-lived server's memory flat and its callers apart.
SERVER_SAFE_DSPY_SETTINGS: dict[str, Any] = {
    "disable_history": True,
    "max_history_size": 0,
    "max_trace_size": 0,
    "provide_traceback": False,
}

# Each call gets a trace of its own (BestOfN and Refine read it to give feedback), holding at
# most this many steps: the oldest are dropped, as DSPy does, and the trace dies with the call.
CALL_TRACE_STEPS = 100


@dataclass(frozen=True)
class CallResult:
    outputs: dict[str, Any]
    usage: dict[str, dict[str, Any]]
    model: str
    lm_calls: dict[str, int] = field(default_factory=dict)
    cache_hits: dict[str, int] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    # The predictors that ran, in order (only when the caller asked for it): see `trace_steps`.
    trace: list[dict[str, Any]] | None = None
    # Each LM call's messages and raw response, in order (only when the caller asked for them).
    prompts: list[dict[str, Any]] | None = None


# DSPy modules whose ``aforward`` blocks the event loop: RLM runs the code its LM writes with a
# synchronous interpreter call (seconds, up to its execution timeout) between its async LM calls.
_BLOCKING_AFORWARD: tuple[type, ...] = tuple(
    cls for cls in (getattr(dspy, "RLM", None),) if isinstance(cls, type)
)


def has_native_async(module: dspy.Module) -> bool:
    """True when ``aforward`` implements the same logic as ``forward``, and never blocks.

    A subclass that overrides only ``forward`` of a built-in (say ChainOfThought) inherits an
    ``aforward`` that would skip the override, so it must run on the sync path. So must a
    program holding a DSPy module whose ``aforward`` does blocking work (:data:`_BLOCKING_AFORWARD`).
    """
    if any(isinstance(sub, _BLOCKING_AFORWARD) for _, sub in module.named_sub_modules()):
        return False
    mro = type(module).__mro__
    forward_owner = next((i for i, cls in enumerate(mro) if "forward" in vars(cls)), len(mro))
    aforward_owner = next((i for i, cls in enumerate(mro) if "aforward" in vars(cls)), len(mro))
    return aforward_owner <= forward_owner and aforward_owner < len(mro)


class _CallTrace(list[Any]):
    """One call's trace, never longer than :data:`CALL_TRACE_STEPS`: DSPy bounds what a
    predictor appends, not what BestOfN and Refine extend it with."""

    def append(self, step: Any) -> None:
        super().append(step)
        del self[:-CALL_TRACE_STEPS]

    def extend(self, steps: Any) -> None:
        super().extend(steps)
        del self[:-CALL_TRACE_STEPS]


class _CallUsage(UsageTracker):
    """One call's usage tracker, shared with the threads ``dspy.Parallel`` starts (DSPy gives
    each a deep copy it never merges back, so their tokens would go unreported)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _CallUsage:
        return self


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
        keep_tools_off_loop(program.module)
        self.native_async = has_native_async(program.module) and not has_own_callbacks(program.module)
        self._threads = threads
        # --adapter (or the embedded model's JSON) first, else the one the program file configures.
        self._adapter = adapter if adapter is not None else program.configured_adapter

    @property
    def adapter(self) -> dspy.Adapter | None:
        """The adapter calls run under (None: whatever DSPy's settings hold)."""
        return self._adapter

    def _settings(
        self, lm: dspy.BaseLM, scope: CallScope, usage: UsageTracker, trace: _CallTrace
    ) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "lm": lm,
            **SERVER_SAFE_DSPY_SETTINGS,
            "trace": trace,
            "max_trace_size": CALL_TRACE_STEPS,
            "usage_tracker": usage,
            SCOPE_SETTING: scope,
        }
        if self._adapter is not None:
            settings["adapter"] = self._adapter
        return settings

    async def _run(self, inputs: dict[str, Any], scope: CallScope) -> Any:
        if self.native_async:
            return await self.program.module.acall(**inputs)
        return await scope.run_in_thread(functools.partial(self.program.module, **inputs))

    @functools.cached_property
    def _names(self) -> PredictorNames:
        from dspy_serve.serving.streaming import PredictorNames

        return PredictorNames(self.program.module)

    def _trace_of(self, trace: _CallTrace, want: bool) -> list[dict[str, Any]] | None:
        return trace_steps(trace, self._names) if want else None

    async def call(
        self, inputs: dict[str, Any], *, lm: dspy.BaseLM, scope: CallScope, trace: bool = False
    ) -> CallResult:
        scope.attach(self._threads)
        usage, steps = _CallUsage(), _CallTrace()
        with enter_scope(scope), dspy.context(**self._settings(lm, scope, usage, steps)):
            try:
                prediction = await self._run(inputs, scope)
            except BaseException as exc:
                scope.cancel()  # LM calls of a worker thread still running are cancelled too
                note_usage(exc, usage.get_total_tokens())
                raise
            finally:
                scope.usage = usage.get_total_tokens()  # charged whatever the outcome
            return _result(self._outputs(prediction), usage, lm, scope, self._trace_of(steps, trace))

    async def stream(
        self, inputs: dict[str, Any], *, lm: dspy.BaseLM, scope: CallScope, trace: bool = False
    ) -> AsyncGenerator[StreamResponse | StatusMessage | CallResult, None]:
        """Token chunks and status messages as the program runs, then its :class:`CallResult`."""
        from dspy_serve.serving.streaming import ProgramReturned, ProgressMessages, stream_program

        module = self.program.module
        names = self._names
        provider = getattr(module, "serve_status_messages", None) or ProgressMessages(module, names)
        scope.attach(self._threads)
        usage, steps = _CallUsage(), _CallTrace()
        with enter_scope(scope), dspy.context(**self._settings(lm, scope, usage, steps)):
            try:
                run = functools.partial(self._run, inputs, scope)
                # Drained or closed here, in this task: the stream holds a task group.
                async with aclosing(stream_program(run, names, provider)) as items:
                    async for item in items:
                        if isinstance(item, ProgramReturned):
                            outputs = self._outputs(item.value)
                            yield _result(outputs, usage, lm, scope, self._trace_of(steps, trace))
                        else:
                            yield item
            except BaseException as exc:
                scope.cancel()
                note_usage(exc, usage.get_total_tokens())
                raise
            finally:
                scope.usage = usage.get_total_tokens()  # charged whatever the outcome

    def _outputs(self, prediction: Any) -> dict[str, Any]:
        """The declared output fields of what the program returned, as the JSON their schema
        documents (nested Predictions, DSPy types, ...). A bare value (``return "Paris"``) is the
        one declared output."""
        fields = self.interface.outputs.model_fields
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


def _result(
    outputs: dict[str, Any],
    tracker: UsageTracker,
    lm: dspy.BaseLM,
    scope: CallScope,
    trace: list[dict[str, Any]] | None = None,
) -> CallResult:
    """Outputs and accounting: LM calls that reported no usage were answered from the cache."""
    billed = {model: len(entries) for model, entries in tracker.usage_data.items()}
    calls = dict(scope.lm_calls)
    hits = {model: max(0, count - billed.get(model, 0)) for model, count in calls.items()}
    prompts = list(scope.prompts) if scope.prompts is not None else None
    usage = tracker.get_total_tokens()
    return CallResult(outputs, usage, lm.model, calls, hits, trace=trace, prompts=prompts)


def trace_steps(trace: list[Any], names: PredictorNames) -> list[dict[str, Any]]:
    """A call's DSPy trace (``(predictor, inputs, prediction)`` tuples) as JSON: each step's
    predictor by its name in the program (a BestOfN/Refine copy by its original's signature;
    null when no name fits), and its inputs and outputs in their wire form, never raw objects."""
    return [
        {
            "predictor": names.name_of(predictor),
            "inputs": _json_safe(to_wire(dict(inputs))),
            "outputs": _json_safe(to_wire(prediction)),
        }
        for predictor, inputs, prediction in list(trace)
    ]


def _json_safe(value: Any) -> Any:
    """What ``to_wire`` leaves as is and JSON cannot hold (a tool, a callable, ...) as its text."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
