"""The LM an optimization runs on: the service's model, counting calls, tokens and cost, and
refusing to start a call once ``max_calls`` or ``max_cost`` is spent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dspy

__all__ = ["BudgetExhausted", "BudgetLM"]


class BudgetExhausted(RuntimeError):
    """The optimization's budget is spent: it stops, keeping the best program so far."""


class BudgetLM(dspy.LM):
    def __init__(
        self,
        model: str,
        *,
        max_calls: int | None = None,
        max_cost: float | None = None,
        on_call: Callable[[BudgetLM], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.max_calls, self.max_cost, self.on_call = max_calls, max_cost, on_call
        self.calls, self.tokens, self.cost = 0, 0, 0.0
        # Why the budget refused a call: optimizers and Evaluate swallow a failed call's error,
        # so the run checks this after each phase.
        self.exhausted: str | None = None
        self._lock = threading.Lock()

    def _check(self) -> None:
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                self.exhausted = f"--max-calls {self.max_calls} reached"
            elif self.max_cost is not None and self.cost >= self.max_cost:
                self.exhausted = f"--max-cost {self.max_cost:g} USD reached"
            if self.exhausted is not None:
                raise BudgetExhausted(self.exhausted)
            self.calls += 1

    def check_exhausted(self) -> None:
        if self.exhausted is not None:
            raise BudgetExhausted(self.exhausted)

    def _note(self) -> None:
        entry = self.history[-1] if self.history else {}
        usage = entry.get("usage") or {}
        with self._lock:
            self.tokens += int(usage.get("total_tokens") or 0)
            self.cost += float(entry.get("cost") or 0.0)
        if self.on_call is not None:
            self.on_call(self)

    # The whole call, as ServingLM wraps it: DSPy 3.4 deprecates overriding forward().
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._note()

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        try:
            return await super().acall(*args, **kwargs)
        finally:
            self._note()

    def __deepcopy__(self, memo: dict[int, Any]) -> BudgetLM:
        return self  # one budget, however many copies DSPy makes
