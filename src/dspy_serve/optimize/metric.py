"""The default metric: field-wise match of a prediction against the label (the corrected
outputs where a user corrected them, else the outputs that were served)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dspy_serve.serving.loader import TargetError, _import_object

__all__ = ["Metric", "field_match", "load_metric"]

Metric = Callable[..., Any]


def _normal(value: Any) -> Any:
    return " ".join(value.lower().split()) if isinstance(value, str) else value


def field_match(fields: Sequence[str]) -> Metric:
    """Share of ``fields`` the prediction got right (strings compared case- and space-insensitively)."""

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        if not fields:
            return 0.0
        right = sum(_normal(example.get(name)) == _normal(prediction.get(name)) for name in fields)
        score = right / len(fields)
        # While bootstrapping (trace given), only a fully right answer is a demo worth keeping.
        return float(score == 1.0) if trace is not None else score

    return metric


def load_metric(spec: str) -> Metric:
    try:
        metric = _import_object(spec)[0]
    except TargetError as exc:
        raise ValueError(f"--metric {spec!r}: {exc}") from None
    if not callable(metric):
        raise ValueError(f"--metric {spec!r} is not a function")
    return metric  # type: ignore[no-any-return]
