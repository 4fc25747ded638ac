"""A call's prompts and raw LM responses, for a caller who asked and may see them.

DSPy's own LM history stays off server-wide (it would keep every caller's prompts in memory):
instead, a call that asks (``options.prompts``) gets a list on its
:class:`~dspy_serve.call_scope.CallScope`, and each LM call it makes
(:class:`~dspy_serve.lm.registry.ServingLM`) appends what the adapter sent and what the LM
answered. Nothing else of the LM call is kept: never its keyword arguments, headers or key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["lm_exchange"]


def lm_exchange(model: str, args: tuple[Any, ...], kwargs: dict[str, Any], outputs: Any) -> dict[str, Any]:
    """One answered LM call as JSON: its model, the messages sent, and the raw response text
    (one entry per completion: a string, or an object when it carries tool calls or reasoning)."""
    messages = kwargs.get("messages")
    if messages is None:  # lm("a prompt"): DSPy sends it as one user message
        prompt = kwargs.get("prompt", args[0] if args else None)
        messages = [{"role": "user", "content": prompt}] if prompt is not None else []
    return {
        "model": model,
        "messages": [_plain(message) for message in messages],
        "response": [_plain(output) for output in (outputs if isinstance(outputs, list) else [outputs])],
    }


def _plain(value: Any) -> Any:
    """JSON data for what a message or an output holds (a tool call object, ...)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
