"""Many calls of one program, admitted together, run side by side, summed: the fan-out that
``/NAME/batch`` serves over HTTP, and that offline batches and jobs can run without it.

The batch is admitted once, for as many requests as it has items; each item is then a
:class:`~.call.Call` of its own (its own ``call_id``, deadline, capacity slot, reservation,
published record), and owns its error: the other items go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspy_serve.errors import ServeError
from dspy_serve.serving import pricing
from dspy_serve.serving.call import Admission, Call, CallOptions, admit
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.usage import Usage, sum_usage

if TYPE_CHECKING:
    from dspy_serve.serving.service import Service

__all__ = ["Batch", "BatchItem", "BatchResult"]


@dataclass(frozen=True)
class BatchItem:
    """One item's call: its result, or its error (with the tokens it spent, if any)."""

    index: int
    call_id: str
    version: str  # the program version that ran it
    result: CallResult | None = None
    error: ServeError | None = None

    @property
    def usage(self) -> Usage:
        if self.result is not None:
            return self.result.usage
        return (self.error.usage if self.error is not None else None) or {}


@dataclass(frozen=True)
class BatchResult:
    items: list[BatchItem]  # in input order
    usage: Usage  # summed over the items, per model
    cost: dict[str, Any]
    model: str  # the LM the items ran on


class Batch:
    def __init__(
        self,
        service: Service,
        caller: Caller,
        program: Program,
        items: Sequence[dict[str, Any] | ServeError],
        options: CallOptions,
        *,
        wire: str,
    ) -> None:
        self._service, self._caller, self._program = service, caller, program
        self._items, self._options, self._wire = items, options, wire
        self._admission: Admission | None = None

    async def admit(self) -> dict[str, str]:
        """Admit every item at once (one request of the budget per item); the headers to send."""
        if self._admission is None:
            self._admission = await admit(
                self._service,
                self._caller,
                self._program,
                self._options,
                requests=len(self._items),
                batch=True,
            )
        return self._admission.headers

    async def run(self) -> BatchResult:
        """Run the items, at most ``batch_concurrency`` at once; each ends in its result or error."""
        await self.admit()
        gate = asyncio.Semaphore(self._service.settings.batch_concurrency)
        items = await asyncio.gather(*(self._run_one(i, item, gate) for i, item in enumerate(self._items)))
        usage = sum_usage(item.usage for item in items)
        lms = self._service.lms
        model = lms.model_of(self._service.model_for(self._options, self._caller)) if lms is not None else ""
        return BatchResult(items, usage, pricing.estimate(usage), model)

    async def _run_one(
        self, index: int, item: dict[str, Any] | ServeError, gate: asyncio.Semaphore
    ) -> BatchItem:
        call = Call(
            self._service,
            self._caller,
            self._program,
            item if not isinstance(item, ServeError) else {},
            self._options,
            wire=self._wire,
            admission=self._admission,
        )
        if isinstance(item, ServeError):
            return BatchItem(index, call.call_id, call.version.name, error=call.refuse(item))
        async with gate:
            try:
                return BatchItem(index, call.call_id, call.version.name, result=await call.result())
            except ServeError as error:  # each item owns its error; the others go on
                return BatchItem(index, call.call_id, call.version.name, error=error)
