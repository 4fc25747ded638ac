"""Token usage as DSPy reports it (``{model: {prompt_tokens, completion_tokens, total_tokens}}``):
summed over calls, and flattened over models, the same way for every wire and every observer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dspy_serve.lm.budget import tokens_of as total_tokens  # counted in one place, where LM calls settle

__all__ = ["Usage", "flat_usage", "sum_usage", "total_tokens"]

Usage = dict[str, dict[str, Any]]


def flat_usage(usage: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """``{prompt_tokens, completion_tokens, total_tokens}`` summed over every model."""
    prompt = sum(int(counts.get("prompt_tokens") or 0) for counts in usage.values())
    completion = sum(int(counts.get("completion_tokens") or 0) for counts in usage.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total_tokens(usage)}


def sum_usage(usages: Iterable[Mapping[str, Mapping[str, Any]]]) -> Usage:
    """Several calls' usage as one, per model and per count (a batch's)."""
    total: Usage = {}
    for usage in usages:
        for model, counts in usage.items():
            into = total.setdefault(model, {})
            for key, value in counts.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
    return total
