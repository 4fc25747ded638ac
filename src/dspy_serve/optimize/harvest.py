"""``harvest``: each predictor's demos straight from the captured traces of well-rated calls.

A captured trace (``--capture-trace``) holds what each predictor was given and answered on a
real call; a call its user rated well (or corrected) is a demo as good as a bootstrapped one,
with no teacher run and no LM cost. A correction replaces the fields it names in the step
that produced them. Without traces, a one-predictor program takes the call's inputs and label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_serve.data.dataset import label_of

__all__ = ["HarvestedDemo", "harvest"]


@dataclass(frozen=True)
class HarvestedDemo:
    predictor: str
    call_id: str
    fields: dict[str, Any]


def _good(row: dict[str, Any], min_score: float | None) -> bool:
    if row.get("correction"):
        return True
    score = row.get("score")
    if min_score is None:
        return row.get("outputs") is not None and (score is None or score > 0)
    return score is not None and score >= min_score


def harvest(
    program: dspy.Module,
    rows: Sequence[dict[str, Any]],
    *,
    max_demos: int = 4,
    min_score: float | None = None,
) -> list[HarvestedDemo]:
    """Fill each predictor's demos (at most ``max_demos``, best rated first, newest among equals);
    returns what went where."""
    predictors = dict(program.named_predictors())
    ranked = sorted(
        (row for row in rows if _good(row, min_score)),
        key=lambda row: (bool(row.get("correction")), row.get("score") or 0.0, row.get("created_at") or 0.0),
        reverse=True,
    )
    chosen: dict[str, list[HarvestedDemo]] = {name: [] for name in predictors}
    for row in ranked:
        for name, fields in _steps(row, predictors):
            if len(chosen[name]) < max_demos and all(demo.fields != fields for demo in chosen[name]):
                chosen[name].append(HarvestedDemo(name, row["call_id"], fields))
    for name, predictor in predictors.items():
        predictor.demos = [dspy.Example(augmented=True, **demo.fields) for demo in chosen[name]]
    return [demo for demos in chosen.values() for demo in demos]


def _steps(row: dict[str, Any], predictors: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    correction = row.get("correction") or {}
    trace = row.get("trace")
    if not trace:
        if len(predictors) != 1:
            return []
        name, predictor = next(iter(predictors.items()))
        fields = {**(row.get("inputs") or {}), **label_of(row)}
        wanted = list(predictor.signature.fields)
        return [(name, {key: fields[key] for key in wanted})] if all(key in fields for key in wanted) else []
    steps = []
    for index, step in enumerate(trace):
        name = step.get("predictor")
        if name not in predictors:
            continue
        outputs = dict(step.get("outputs") or {})
        # The correction names program outputs: it fixes the last step that produced each one.
        for key, value in correction.items():
            if key in outputs and index == _last_producing(trace, key):
                outputs[key] = value
        fields = {**(step.get("inputs") or {}), **outputs}
        if all(key in fields for key in predictors[name].signature.fields):
            steps.append((name, {key: fields[key] for key in predictors[name].signature.fields}))
    return steps


def _last_producing(trace: list[dict[str, Any]], key: str) -> int | None:
    """The index of the last step whose outputs hold ``key``."""
    for index in range(len(trace) - 1, -1, -1):
        if key in (trace[index].get("outputs") or {}):
            return index
    return None
