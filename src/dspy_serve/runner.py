"""Run one program call without ever blocking the event loop.

Programs with a native ``aforward`` (every DSPy built-in, and custom modules that define one)
are awaited through ``acall``. Sync-only programs run in a bounded thread pool of our own,
sized from the server's in-flight limit rather than DSPy's global default of 8, with the
request's DSPy context copied into the thread. A sync call cannot be interrupted mid-flight:
once its request is cancelled or times out it stops at its next LM call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_serve.loader import LoadedProgram
from dspy_serve.schema import ProgramInterface
from dspy_serve.scope import CallScope, enter_scope

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
        executor: ThreadPoolExecutor,
        adapter: dspy.Adapter | None,
    ) -> None:
        self.program = program
        self.interface = interface
        self.native_async = has_native_async(program.module)
        self._executor = executor
        self._adapter = adapter

    async def call(self, inputs: dict[str, Any], *, lm: dspy.BaseLM, scope: CallScope) -> CallResult:
        settings: dict[str, Any] = {"lm": lm, **SERVER_SAFE_DSPY_SETTINGS}
        if self._adapter is not None:
            settings["adapter"] = self._adapter
        with enter_scope(scope), dspy.context(**settings), dspy.track_usage() as tracker:
            try:
                if self.native_async:
                    prediction = await self.program.module.acall(**inputs)
                else:
                    prediction = await self._call_in_thread(inputs)
            except BaseException:
                scope.cancel()  # a worker thread still running stops at its next LM call
                raise
            return CallResult(self._outputs(prediction), tracker.get_total_tokens(), lm.model)

    async def _call_in_thread(self, inputs: dict[str, Any]) -> Any:
        context = contextvars.copy_context()
        call = functools.partial(context.run, self.program.module, **inputs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _outputs(self, prediction: Any) -> dict[str, Any]:
        fields = self.interface.outputs.model_fields
        if isinstance(prediction, dspy.Prediction):
            present = prediction.keys()  # a Prediction is not a Mapping: `in` needs its keys
            values = {name: prediction.get(name) for name in fields if name in present}
        elif isinstance(prediction, dict):
            values = {name: prediction[name] for name in fields if name in prediction}
        else:
            raise TypeError(f"program returned {type(prediction).__name__}, expected a dspy.Prediction")
        return values
