"""The deadline and cancellation state of one request, visible to every LM call it makes.

It lives in a context variable, so it follows the call into DSPy's own tasks and into the
worker thread of a sync-only program (contexts are copied there), and LM calls can check it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from dspy_serve.errors import ClientCancelled, RequestTimeout

__all__ = ["CallScope", "current_scope", "enter_scope"]


@dataclass
class CallScope:
    """One request's deadline (``time.monotonic()`` seconds) and cancellation flag."""

    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    lm_calls: Counter[str] = field(default_factory=Counter)  # answered LM calls, by model
    # Tokens spent, by model, as DSPy's usage tracker saw them: left here by the runner when the
    # call ends, however it ends, so a failed or abandoned call is charged too.
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def starting_now(cls, timeout: float) -> CallScope:
        return cls(deadline=time.monotonic() + timeout)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        """Raise instead of starting more LM work for a request nobody waits for."""
        if self.cancelled.is_set():
            raise ClientCancelled("the request was cancelled")
        if self.remaining() <= 0:
            raise RequestTimeout()


_current: ContextVar[CallScope | None] = ContextVar("dspy_serve_call_scope", default=None)


def current_scope() -> CallScope | None:
    return _current.get()


@contextmanager
def enter_scope(scope: CallScope) -> Iterator[CallScope]:
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
