"""A lock that hands itself to waiters in arrival order.

The embedded model generates one answer at a time. ``threading.Lock`` lets a thread that
releases it take it straight back, and wakes waiters in no set order, so under load one caller
could wait through many generations while later ones go first. Callers here queue.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["FifoLock"]


class FifoLock:
    """A non-reentrant mutex granted first come, first served."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiting: deque[object] = deque()
        self._held = False

    def acquire(self) -> None:
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                self._cond.wait_for(lambda: not self._held and self._waiting[0] is ticket)
            except BaseException:  # interrupted while queued: leave the queue, let the next one in
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked FifoLock")
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
