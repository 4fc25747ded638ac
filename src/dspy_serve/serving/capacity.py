"""Bound the work in flight, and refuse early instead of letting latency explode.

Up to ``limit`` program calls run at once; up to ``queue`` more wait for a slot. Beyond that a
request is refused at once with 503 and ``Retry-After``: a fast, honest "not now" is better
for callers and load balancers than a queue whose wait exceeds every client's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Gauge

from dspy_serve.errors import Overloaded

__all__ = ["CapacityGate"]


class CapacityGate:
    def __init__(
        self, limit: int, queue: int, running: Gauge | None = None, waiting: Gauge | None = None
    ) -> None:
        self.limit = limit
        self.queue = queue
        self._slots = asyncio.Semaphore(limit)
        self._running = running or Gauge("running", "unexported", registry=None)
        self._waiting_gauge = waiting or Gauge("waiting", "unexported", registry=None)
        self.running = 0
        self.waiting = 0

    def check(self) -> None:
        """Refuse now if a call arriving now would be refused (used before a stream starts)."""
        if self._slots.locked() and self.waiting >= self.queue:
            raise Overloaded("The server is at capacity; retry shortly.", retry_after=1)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.check()
        self.waiting += 1
        self._waiting_gauge.inc()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            self._waiting_gauge.dec()
        self.running += 1
        self._running.inc()
        try:
            yield
        finally:
            self.running -= 1
            self._running.dec()
            self._slots.release()
