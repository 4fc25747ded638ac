"""One admitted call, streamed as domain events (:mod:`.events`) for any wire format to encode."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import dspy
from dspy.streaming import StatusMessage, StreamResponse

from dspy_serve.errors import RequestTimeout, from_exception
from dspy_serve.serving.accounts import CallAccounts
from dspy_serve.serving.call_scope import CallScope
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.capacity import CapacityGate
from dspy_serve.serving.events import Failed, Finished, Status, StreamEvent, Token
from dspy_serve.serving.programs import Program
from dspy_serve.serving.reuse import Reuse
from dspy_serve.serving.runner import CallResult, ProgramRunner
from dspy_serve.serving.streaming import well_formed

__all__ = ["CallStream"]


class CallStream:
    """Iterate :meth:`events` to its end in one task, within ``timeout`` seconds (the deadline
    belongs to the consumer: a cancel scope must not span a ``yield``); when it passes, send
    :meth:`timed_out` instead.

    Streams use the response cache (not coalescing: their tokens are their own): a hit streams
    as one Finished event, and a finished stream's answer is kept like any call's. Await
    :meth:`look_up` before sending headers to know which (the caller's ``cache``). A stream
    that shows its own run (trace, prompts) skips the cache.
    """

    def __init__(
        self,
        program: Program,
        runner: ProgramRunner,
        lm: dspy.BaseLM,
        inputs: dict[str, Any],
        caller: Caller,
        *,
        scope: CallScope,
        trace: bool,
        capacity: CapacityGate,
        accounts: CallAccounts,
        reuse: Reuse | None,
        timeout: float,
    ) -> None:
        self.timeout = timeout
        self._program, self._runner, self._lm = program, runner, lm
        self._inputs, self._caller = inputs, caller
        self._scope, self._trace = scope, trace
        self._capacity, self._accounts, self._reuse = capacity, accounts, reuse
        self._key: str | None = None
        self._hit: CallResult | None = None
        self._looked_up = reuse is None

    @property
    def caller(self) -> Caller:
        return self._caller

    async def look_up(self) -> None:
        """Whether the response cache has the answer (then :meth:`events` streams it)."""
        if self._looked_up:
            return
        self._looked_up = True
        reuse = self._reuse
        if reuse is not None and reuse.cache is not None:
            self._key = reuse.key(self._program, self._inputs, self._lm, self._caller)
            if self._key is not None:
                self._hit = await reuse.cached(self._key, self._caller)
                if self._hit is None:
                    self._caller.note_reuse(False)

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Tokens and statuses as the program runs, then exactly one Finished or Failed."""
        await self.look_up()
        if self._hit is not None:
            yield Finished(self._hit)
            return
        accounts = self._accounts
        reserved = -1  # nothing to settle until a reservation is made
        try:
            reserved = await accounts.reserve(self._caller, self._lm, self._scope)
            async with (
                self._capacity.slot(),
                aclosing(
                    self._runner.stream(self._inputs, lm=self._lm, scope=self._scope, trace=self._trace)
                ) as items,
            ):
                async for item in items:
                    if isinstance(item, StreamResponse):
                        if item.chunk:
                            yield Token(item.predict_name, item.signature_field_name, well_formed(item.chunk))
                    elif isinstance(item, StatusMessage):
                        yield Status(item.message)
                    else:
                        finished = accounts.finish(self._program, item)
                        await accounts.settle(self._caller, reserved, self._scope)
                        reserved = -1  # settled
                        if self._key is not None and self._reuse is not None:
                            await self._reuse.store(self._key, self._caller, finished)
                        yield Finished(finished)
        except Exception as exc:
            yield Failed(self._caller.report(from_exception(exc)))
        finally:
            if reserved >= 0:
                await accounts.settle(self._caller, reserved, self._scope)

    def timed_out(self) -> Failed:
        """The deadline passed: stop the program's LM work and say so."""
        self._scope.cancel()
        return Failed(self._caller.report(RequestTimeout.after(self.timeout)))
