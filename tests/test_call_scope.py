"""A worker thread's LM work runs on the request's event loop, and never waits for a loop that is gone."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from dspy_serve.call_scope import CallScope
from dspy_serve.errors import ClientCancelled, RequestTimeout

Attached = tuple[CallScope, asyncio.AbstractEventLoop, threading.Thread]


def _scope_attached_to_a_loop(timeout: float) -> Attached:
    scope = CallScope.starting_now(timeout)
    loop = asyncio.new_event_loop()
    attached = threading.Event()

    async def attach() -> None:
        scope.attach(anyio.CapacityLimiter(4))
        attached.set()

    def run() -> None:
        loop.call_soon(lambda: loop.create_task(attach()))
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert attached.wait(5)
    return scope, loop, thread


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_work_runs_on_the_loop_with_the_callers_context_and_returns_its_value() -> None:
    scope, loop, thread = _scope_attached_to_a_loop(timeout=5)
    try:

        async def where() -> tuple[int, bool]:
            return threading.get_ident(), scope.off_loop()

        ident, off_loop = scope.run_on_loop(where)
        assert ident == thread.ident and off_loop is False
    finally:
        _stop(loop, thread)


def test_a_cancelled_scope_stops_the_work_on_the_loop() -> None:
    scope, loop, thread = _scope_attached_to_a_loop(timeout=5)
    started = threading.Event()
    try:

        async def hang() -> None:
            started.set()
            await asyncio.sleep(60)

        threading.Timer(0.2, lambda: started.wait(5) and scope.cancel()).start()
        with pytest.raises(ClientCancelled):
            scope.run_on_loop(hang)
    finally:
        _stop(loop, thread)


def test_the_deadline_stops_the_work_on_the_loop() -> None:
    scope, loop, thread = _scope_attached_to_a_loop(timeout=0.3)
    try:
        with pytest.raises(RequestTimeout):
            scope.run_on_loop(lambda: asyncio.sleep(60))
    finally:
        _stop(loop, thread)


def test_a_closed_loop_is_a_cancelled_request_not_a_hang() -> None:
    scope, loop, thread = _scope_attached_to_a_loop(timeout=60)
    _stop(loop, thread)
    loop.close()
    with pytest.raises(ClientCancelled):
        scope.run_on_loop(lambda: asyncio.sleep(0))
