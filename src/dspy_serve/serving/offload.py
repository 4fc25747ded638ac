"""Keep the user's sync code off the event loop, and their async code on it.

``dspy.ReAct`` runs natively on the event loop (it has an ``aforward``), and DSPy's async path
calls a sync tool inline: a tool doing blocking HTTP would stall every request of the process.
So the tools of a served program are switched, once at start-up, to a ``dspy.Tool`` that runs
a sync function in a worker thread when awaited, and an async function on the request's event
loop when called from a worker thread (a ReAct inside a sync-only program). Async tools stay
native.

DSPy runs callbacks inline too; they cannot be moved alone, so a program whose modules carry
their own callbacks runs entirely in a worker thread (:func:`has_own_callbacks`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from typing import Any

import dspy
from dspy.utils.callback import with_callbacks

from dspy_serve.call_scope import current_scope

__all__ = ["has_own_callbacks", "keep_tools_off_loop"]

_TOOL_CALL = dspy.Tool.__call__.__wrapped__  # without DSPy's callbacks: the served methods run them
_TOOL_ACALL = dspy.Tool.acall.__wrapped__


def _is_async(func: Any) -> bool:
    """An async function, or an object whose ``__call__`` (own or inherited) is one."""
    call = next((vars(cls)["__call__"] for cls in type(func).__mro__ if "__call__" in vars(cls)), None)
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


class ServedTool(dspy.Tool):
    """A program's ``dspy.Tool``, as served (see :func:`keep_tools_off_loop`)."""

    @with_callbacks  # type: ignore[untyped-decorator]
    async def acall(self, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is None or _is_async(self.func):
            return await _TOOL_ACALL(self, **kwargs)
        parsed = self._validate_and_parse_args(**kwargs)
        result = await scope.run_in_thread(functools.partial(self.func, **parsed))
        return await result if inspect.isawaitable(result) else result

    @with_callbacks  # type: ignore[untyped-decorator]
    def __call__(self, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is not None and scope.off_loop() and _is_async(self.func):
            return scope.run_on_loop(functools.partial(_TOOL_ACALL, self, **kwargs))
        return _TOOL_CALL(self, **kwargs)


def _tools_in(value: Any) -> Iterator[dspy.Tool]:
    if isinstance(value, dspy.Tool):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tools_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tools_in(item)


def keep_tools_off_loop(module: dspy.Module) -> int:
    """Switch every plain ``dspy.Tool`` the program's modules hold (ReAct's ``tools``, or a
    custom agent's attributes) to :class:`ServedTool`, in place; subclasses of ``dspy.Tool``
    are the user's own and are left as they are. Returns how many were switched."""
    count = 0
    for _, sub in module.named_sub_modules():
        for value in vars(sub).values():
            for tool in _tools_in(value):
                if type(tool) is dspy.Tool:
                    object.__setattr__(tool, "__class__", ServedTool)
                    count += 1
    return count


def has_own_callbacks(module: dspy.Module) -> bool:
    """True when a module of the program has callbacks of its own (sync code DSPy runs inline)."""
    return any(getattr(sub, "callbacks", None) for _, sub in module.named_sub_modules())
