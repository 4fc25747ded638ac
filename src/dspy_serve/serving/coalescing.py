"""Identical deterministic calls in flight at the same time run the program once.

The first caller's call runs in a task of its own (a *flight*); every identical call that comes
while it runs waits for the same answer or the same error. A waiter that leaves (its client hung
up, its batch was cancelled) stops waiting, and the call goes on for the others: it is cancelled
only when its last waiter leaves, or when its own deadline passes.

Accounting: the LM was called once, so the call is charged once, to the caller who started it
(its token budget, its usage and cost, even if it left before the end). The others get the
answer with no usage and no cost, like a cache hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from dspy_serve.serving.runner import CallResult

__all__ = ["Flights"]


class _Flight:
    def __init__(self, task: asyncio.Task[CallResult]) -> None:
        self.task = task
        self.waiters = 0

    async def wait(self) -> CallResult:
        self.waiters += 1
        try:
            # Shielded: cancelling one waiter must not cancel the call the others wait for.
            return await asyncio.shield(self.task)
        finally:
            self.waiters -= 1
            if self.waiters == 0 and not self.task.done():
                self.task.cancel()  # nobody waits any more: stop the LM work


class Flights:
    """The calls in flight, by key."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}

    def join(self, key: str) -> Coroutine[Any, Any, CallResult] | None:
        """Wait for the identical call in flight, if there is one."""
        flight = self._flights.get(key)
        return flight.wait() if flight is not None else None

    async def lead(self, key: str, call: Coroutine[Any, Any, CallResult]) -> CallResult:
        """Run ``call`` as the flight of ``key`` (or on its own, if another became that flight
        first) and wait for it like any other waiter."""
        if key in self._flights:
            return await call
        task = asyncio.ensure_future(call)
        flight = self._flights[key] = _Flight(task)
        task.add_done_callback(lambda _: self._land(key, flight))
        return await flight.wait()

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: its waiters have it, or nobody was left to

    def __len__(self) -> int:
        return len(self._flights)
