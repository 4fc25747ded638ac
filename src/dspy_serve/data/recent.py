"""The last calls of captured programs, sampled or not, kept in memory for a while: feedback
may arrive before a call's row is written, or for a call that was not sampled."""

from __future__ import annotations

import time
from collections import OrderedDict

from dspy_serve.serving.observers import FinishedCall

__all__ = ["RecentCalls"]

# How long a call stays findable in memory, whatever the room left.
RECENT_SECONDS = 3600.0


class RecentCalls:
    def __init__(self, size: int, seconds: float = RECENT_SECONDS) -> None:
        self._size, self._seconds = size, seconds
        self._calls: OrderedDict[str, tuple[float, FinishedCall]] = OrderedDict()

    def add(self, call: FinishedCall) -> None:
        if self._size <= 0:
            return
        self._calls[call.call_id] = (time.monotonic(), call)
        while len(self._calls) > self._size:
            self._calls.popitem(last=False)

    def get(self, call_id: str) -> FinishedCall | None:
        found = self._calls.get(call_id)
        if found is None:
            return None
        added, call = found
        if time.monotonic() - added > self._seconds:
            del self._calls[call_id]
            return None
        return call

    def __len__(self) -> int:
        return len(self._calls)
