"""``gepa`` and ``mipro``: DSPy's instruction optimizers on the captured calls.

GEPA reads textual feedback as it rewrites instructions: it gets the users' own words, the
comment they left and the correction they made, beside the metric's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from dspy_serve.optimize.metric import Metric
from dspy_serve.optimize.progress import SearchProgress

__all__ = ["feedback_metric", "run_gepa", "run_mipro"]


def feedback_metric(metric: Metric, rows: Sequence[dict[str, Any]], outputs: Sequence[str]) -> Metric:
    """``metric``'s score, with feedback in words: what was expected, and what the user said."""
    by_call = {row["call_id"]: row for row in rows}

    def scored(
        gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> dspy.Prediction:
        value: Any = metric(gold, pred)
        score = float(value.score if isinstance(value, dspy.Prediction) else value)
        said = []
        if score < 1:
            expected = ", ".join(f"{name}={gold.get(name)!r}" for name in outputs)
            got = ", ".join(f"{name}={pred.get(name)!r}" for name in outputs)
            said.append(f"Expected {expected}; the program answered {got}.")
        row = by_call.get(gold.get("call_id"), {})
        if row.get("correction"):
            said.append(f"A user corrected the served answer {row.get('outputs')} to {row['correction']}.")
        if row.get("comment"):
            said.append(f"The user commented: {row['comment']}")
        return dspy.Prediction(score=score, feedback=" ".join(said) or "Correct.")

    return scored


def run_gepa(
    student: dspy.Module,
    trainset: list[dspy.Example],
    valset: list[dspy.Example],
    metric: Metric,
    lm: dspy.LM,
    seed: int,
    search: SearchProgress | None = None,
) -> dspy.Module:
    optimizer = dspy.GEPA(metric=metric, auto="light", reflection_lm=lm, track_stats=False, seed=seed)
    if search is not None:  # GEPA's own budget of metric calls, which compile() works out
        search.total_of = lambda: optimizer.max_metric_calls
    return optimizer.compile(student, trainset=trainset, valset=valset or None)


def run_mipro(
    student: dspy.Module, trainset: list[dspy.Example], metric: Metric, max_demos: int, seed: int
) -> dspy.Module:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("--optimizer mipro needs optuna: pip install 'dspy-serve[optimize]'") from None
    optimizer = dspy.MIPROv2(metric=metric, auto="light", num_threads=4, seed=seed)
    return optimizer.compile(
        student, trainset=trainset, max_bootstrapped_demos=max_demos, max_labeled_demos=max_demos
    )
