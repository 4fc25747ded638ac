"""The deadline and cancellation state of one request, visible to every LM call it makes.

It lives in a context variable, so it follows the call into DSPy's own tasks and into the
worker thread of a sync-only program (contexts are copied there), and in DSPy's settings, so it
also reaches the threads DSPy starts itself (``dspy.Parallel`` copies only those). LM calls check
it, and a worker thread uses it to run its LM calls on the request's event loop, where
cancelling the request closes their connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import dspy

from dspy_serve.errors import ClientCancelled, RequestTimeout

if TYPE_CHECKING:
    from dspy_serve.lm.budget import TokenBudget

__all__ = ["SCOPE_SETTING", "CallScope", "current_scope", "enter_scope"]

T = TypeVar("T")

_LOOP_GONE_AFTER = 5.0  # seconds past the deadline after which a waiting thread stops waiting

# The DSPy settings key that carries the scope into threads DSPy starts (dspy.Parallel).
SCOPE_SETTING = "dspy_serve_call_scope"


@dataclass
class CallScope:
    """One request's deadline (``time.monotonic()`` seconds) and cancellation flag."""

    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    lm_calls: Counter[str] = field(default_factory=Counter)  # answered LM calls, by model
    # Tokens spent, by model, as DSPy's usage tracker saw them: left here by the runner when the
    # call ends, however it ends, so a failed or abandoned call is charged too.
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each answered LM call's messages and raw response, in order: a list only when the caller
    # asked for its prompts (see :mod:`.prompts`); None, the default, captures nothing.
    prompts: list[dict[str, Any]] | None = None
    # The caller's token budget, which each LM call reserves from and settles to (see
    # :mod:`dspy_serve.lm.budget`); None when no token budget applies.
    budget: TokenBudget | None = None
    _loop: anyio.lowlevel.EventLoopToken | None = field(default=None, repr=False)
    _asyncio_loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _loop_thread: int | None = field(default=None, repr=False)
    _on_loop: set[anyio.CancelScope] = field(default_factory=set, repr=False)
    _threads: anyio.CapacityLimiter | None = field(default=None, repr=False)

    @classmethod
    def starting_now(cls, timeout: float, *, keep_prompts: bool = False) -> CallScope:
        """A new call's scope; it keeps its LM calls' prompts only when the caller asked for them."""
        return cls(deadline=time.monotonic() + timeout, prompts=[] if keep_prompts else None)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cancel(self) -> None:
        """Stop the request's LM work: no new LM call starts, and those running on its event
        loop for a worker thread are cancelled, which closes their connections."""
        self.cancelled.set()
        for cancel_scope in list(self._on_loop):
            self._call_on_loop(cancel_scope.cancel)

    def check(self) -> None:
        """Raise instead of starting more LM work for a request nobody waits for."""
        if self.cancelled.is_set():
            raise ClientCancelled("the request was cancelled")
        if self.remaining() <= 0:
            raise RequestTimeout()

    # --- sync code in worker threads, LM calls on the event loop ---------------------------------
    def attach(self, threads: anyio.CapacityLimiter) -> None:
        """Remember the event loop running the request (call this on it) and the worker threads
        its sync code may use."""
        self._loop = anyio.lowlevel.current_token()
        self._asyncio_loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._threads = threads

    async def run_in_thread(self, func: Callable[[], T]) -> T:
        """Run sync user code (a program, a tool) in a worker thread, never on the event loop.

        The context (DSPy settings, this scope) is copied into the thread. A cancelled request
        stops waiting at once; the thread itself stops at its next LM call.
        """
        return await anyio.to_thread.run_sync(func, limiter=self._threads, abandon_on_cancel=True)

    def off_loop(self) -> bool:
        """True in a thread that works for this request while its event loop runs elsewhere."""
        return self._loop is not None and threading.get_ident() != self._loop_thread

    def run_on_loop(self, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` on the request's event loop and wait here for its result.

        It runs as part of the request: cancelling the request or passing its deadline cancels
        it there (an HTTP request in flight is closed at once) and raises the typed error here.

        The hand-off is a task started with ``call_soon_threadsafe`` and a plain lock the task
        releases when done: anyio's ``from_thread.run`` does the same through a
        ``concurrent.futures.Future``, whose Python-level condition variable cost ~0.1 ms of CPU
        per LM call of a sync program (bench.profiling, two-step program).
        """
        loop = self._asyncio_loop
        assert loop is not None, "attach() first"

        async def guarded() -> T:
            with anyio.move_on_after(self.remaining()) as cancel_scope:
                self._on_loop.add(cancel_scope)
                if self.cancelled.is_set():
                    cancel_scope.cancel()
                try:
                    return await work()
                finally:
                    self._on_loop.discard(cancel_scope)
            self.check()
            raise ClientCancelled("the request was cancelled")  # pragma: no cover - check() raised

        finished = threading.Lock()
        finished.acquire()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(guarded())  # in a copy of this thread's context
            task.add_done_callback(lambda _: finished.release())
            tasks.append(task)

        try:
            loop.call_soon_threadsafe(start, context=contextvars.copy_context())
        except RuntimeError:  # the loop is closed: the server is gone
            raise ClientCancelled("the request was cancelled") from None
        # The task ends by the deadline (its own cancel scope); the margin covers a stopped loop.
        if not finished.acquire(timeout=max(self.remaining(), 0) + _LOOP_GONE_AFTER):
            raise ClientCancelled("the request's event loop stopped")
        if tasks[0].cancelled():  # the loop cancelled it (shutdown)
            raise ClientCancelled("the request was cancelled")
        return tasks[0].result()

    def _call_on_loop(self, func: Callable[[], Any]) -> None:
        if self._loop is None or threading.get_ident() == self._loop_thread:
            func()
        else:
            with suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(func, token=self._loop)


_current: ContextVar[CallScope | None] = ContextVar("dspy_serve_call_scope", default=None)


def current_scope() -> CallScope | None:
    scope = _current.get()
    if scope is None:
        carried = dspy.settings.get(SCOPE_SETTING)
        scope = carried if isinstance(carried, CallScope) else None
    return scope


@contextmanager
def enter_scope(scope: CallScope) -> Iterator[CallScope]:
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
