"""Estimated cost of a request, from DSPy's bundled model metadata.

An estimate, never a bill: token counts times the per-token rates DSPy ships for the model.
Unknown pricing is ``None`` with the reason, never zero. The metadata is read from the
snapshot bundled with DSPy (``LITELLM_LOCAL_MODEL_COST_MAP=True`` at startup), so pricing
never reaches out to the network.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["ModelCost", "estimate"]

ModelCost = dict[str, Any]  # {"usd": float | None, "reason": str | None}


@lru_cache(maxsize=256)
def _rates(model: str) -> tuple[float, float] | None:
    from dspy.clients.model_metadata import model_info, rate

    provider, _, name = model.partition("/")
    if not name:
        provider, name = "openai", model
    for candidate in (provider, f"{provider}-chat"):
        info = model_info(candidate, name)
        if info:
            prompt, completion = rate(info, "input_cost_per_token"), rate(info, "output_cost_per_token")
            if prompt is not None and completion is not None:
                return float(prompt), float(completion)
    return None


def estimate(usage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"total_usd": ..., "by_model": {model: {"usd", "reason"}}}``; total is None if any is unknown."""
    by_model: dict[str, ModelCost] = {}
    for model, counts in usage.items():
        prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
        rates = None if model.startswith("local/") else _rates(model)
        if model.startswith("local/"):
            by_model[model] = {"usd": 0.0, "reason": "embedded model: no per-token price"}
        elif rates is None:
            by_model[model] = {"usd": None, "reason": f"no pricing known for {model}"}
        elif not isinstance(prompt, int) or not isinstance(completion, int):
            by_model[model] = {"usd": None, "reason": "the provider reported no token counts"}
        else:
            by_model[model] = {"usd": prompt * rates[0] + completion * rates[1], "reason": None}
    amounts = [cost["usd"] for cost in by_model.values()]
    total = None if any(amount is None for amount in amounts) else sum(amounts)
    return {"total_usd": total, "by_model": by_model}
