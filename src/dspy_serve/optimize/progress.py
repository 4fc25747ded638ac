"""What an optimizer's search has done so far: examples scored, candidate programs tried (trials),
and the best score of a full evaluation.

DSPy's optimizers share no progress API: MIPROv2 logs "Trial N / M", GEPA keeps its own state,
BootstrapFewShot only a tqdm bar. Two hooks hold for all of them, and both are public DSPy:

- **the metric**, which every optimizer calls once per example it scores: wrapped
  (:meth:`SearchProgress.counted`, ``functools.wraps`` so DSPy still reads its signature), it
  counts examples scored. Its total is the optimizer's own budget where it has one: GEPA's
  ``max_metric_calls``; for BootstrapFewShot (one round), the training calls;
- **``Evaluate``**, which MIPROv2 and GEPA run on each candidate program: a DSPy callback
  (``on_evaluate_start`` / ``on_evaluate_end``, installed with ``dspy.context(callbacks=...)``)
  counts trials and keeps the best score among the evaluations on the most examples (a
  minibatch's score is not comparable to a full one's).

No log line is parsed and no private method wrapped, so a DSPy release that reorganizes an
optimizer's internals leaves these figures right.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from dspy.utils.callback import BaseCallback

__all__ = ["SearchProgress"]


class SearchProgress(BaseCallback):
    """Counters, updated from DSPy's threads; ``on_change`` is called after each update."""

    def __init__(self, on_change: Callable[[SearchProgress], None] = lambda _: None) -> None:
        self.on_change = on_change
        self.scored = 0  # examples the metric scored while searching
        self.total: int | None = None  # the search's budget of examples scored, when it has one
        self.total_of: Callable[[], int | None] | None = None  # read lazily: GEPA sets it in compile()
        self.trials = 0  # candidate programs evaluated (DSPy Evaluate runs)
        self.best: float | None = None  # best score (percent) of an evaluation on ``best_of`` examples
        self.best_of = 0
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def counted(self, metric: Callable[..., Any]) -> Callable[..., Any]:
        """``metric``, counting each example it scores."""

        @functools.wraps(metric)
        def scoring(*args: Any, **kwargs: Any) -> Any:
            try:
                return metric(*args, **kwargs)
            finally:
                with self._lock:
                    self.scored += 1
                    if self.total_of is not None:
                        self.total = self.total_of() or self.total
                self.on_change(self)

        return scoring

    # --- DSPy's Evaluate callbacks ------------------------------------------------------------
    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        devset = inputs.get("devset") or getattr(instance, "devset", None) or []
        with self._lock:
            self._sizes[call_id] = len(devset)

    def on_evaluate_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        score = getattr(outputs, "score", None)
        with self._lock:
            size = self._sizes.pop(call_id, 0)
            if exception is not None or not isinstance(score, (int, float)):
                return
            self.trials += 1
            if size > self.best_of:  # a larger evaluation: scores on fewer examples no longer count
                self.best_of, self.best = size, float(score)
            elif size == self.best_of:
                self.best = float(score) if self.best is None else max(self.best, float(score))
        self.on_change(self)

    def describe(self) -> str:
        """One line: what the search did, for the progress bar and the closing summary."""
        scored = f"{self.scored}/{self.total}" if self.total else str(self.scored)
        parts = [f"{scored} examples scored"]
        if self.trials:
            parts.append(f"{self.trials} trials")
        if self.best is not None:
            parts.append(f"best {self.best:.1f}% (on {self.best_of})")
        return ", ".join(parts)
