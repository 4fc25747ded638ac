"""The caller's token budget, enforced at each LM call rather than once per request.

A program may make any number of LM calls, each spending its prompt and its completion, so a
budget held once per request (its ``max_tokens``) was overspent many times over by multi-step
programs. Here every LM call a request makes holds an estimate of what it may spend (its
prompt, estimated from the messages, plus ``max_tokens`` per candidate) before it is sent, and
gives it back for what it really spent once it returns, whatever its outcome: DSPy's usage
tracker reports the tokens of that call alone to a meter. A call with no room left in the
budget is refused (429) before it is sent.

The budget itself (where it is counted, for whom) is a :class:`TokenBudget` the front door puts
on the request's scope; this module only knows how one LM call uses it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import dspy
from dspy.utils.usage_tracker import UsageTracker

__all__ = ["TokenBudget", "estimate_tokens", "spending", "tokens_of"]

logger = logging.getLogger("dspy_serve.lm.budget")

# UTF-8 bytes per token, rounded down so that the estimate errs high: English text averages ~4
# bytes a token, code and most other scripts fewer bytes per token.
_BYTES_PER_TOKEN = 3
# A part of a message that is not text (an image, a file, audio): what providers charge for one
# image at high detail is in the hundreds; the call settles what it really spent.
_TOKENS_PER_PART = 1000
# Seconds the settling of an LM call may take past the request's deadline (it is charged too).
_SETTLE_AT_LEAST = 0.25


class TokenBudget(Protocol):
    """One request's handle on its caller's token budget (see ``serving.token_budget``)."""

    @property
    def default_max_tokens(self) -> int:
        """What a call that sets no ``max_tokens`` is expected to spend at most."""

    async def reserve(self, tokens: int, *, within: float) -> int:
        """Hold ``tokens`` before an LM call, or raise ``RateLimited``; returns what to settle."""

    async def settle(self, reserved: int, spent: int, *, within: float) -> None:
        """Replace a reservation by what the LM call really spent."""

    async def settle_rest(self, spent: int, *, within: float) -> None:
        """When the request ends: charge what it spent (``spent``) beyond what its LM calls settled."""


def tokens_of(usage: Mapping[str, Mapping[str, Any]]) -> int:
    """Total tokens of a usage report (per model: ``total_tokens``, else prompt + completion)."""
    total = 0
    for counts in usage.values():
        spent = counts.get("total_tokens")
        if not isinstance(spent, int):
            spent = (counts.get("prompt_tokens") or 0) + (counts.get("completion_tokens") or 0)
        total += spent
    return total


def estimate_tokens(
    lm: dspy.BaseLM, args: tuple[Any, ...], kwargs: Mapping[str, Any], default_max_tokens: int
) -> int:
    """What one LM call may spend: its prompt (estimated high, from the UTF-8 size of its text)
    plus ``max_tokens`` for each candidate it asks for."""
    prompt = args[0] if args else kwargs.get("prompt")
    messages = kwargs.get("messages")
    prompt_tokens = _text_tokens(prompt) + sum(_message_tokens(m) for m in messages or ())
    options = {**lm.kwargs, **{k: v for k, v in kwargs.items() if v is not None}}
    max_tokens = options.get("max_tokens") or options.get("max_completion_tokens") or default_max_tokens
    candidates = options.get("n") or options.get("num_generations") or 1
    return prompt_tokens + int(max_tokens) * max(1, int(candidates))


def _text_tokens(text: Any) -> int:
    return math.ceil(len(text.encode("utf-8", "replace")) / _BYTES_PER_TOKEN) if isinstance(text, str) else 0


def _message_tokens(message: Any) -> int:
    if not isinstance(message, Mapping):
        return _TOKENS_PER_PART
    content = message.get("content")
    if isinstance(content, str) or content is None:
        return _text_tokens(content) + 4  # the role and the message's framing
    if isinstance(content, list):
        return sum(
            _text_tokens(part.get("text")) if isinstance(part, Mapping) and part.get("type") == "text"
            else _TOKENS_PER_PART
            for part in content
        )  # fmt: skip
    return _TOKENS_PER_PART


class _Meter(UsageTracker):
    """Sees the usage of one LM call, and passes it on to the request's own tracker."""

    def __init__(self, parent: UsageTracker | None) -> None:
        super().__init__()
        self._parent = parent

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        super().add_usage(lm, usage_entry)
        if self._parent is not None:
            self._parent.add_usage(lm, usage_entry)

    @property
    def spent(self) -> int:
        return tokens_of(self.get_total_tokens())


@asynccontextmanager
async def spending(
    budget: TokenBudget,
    lm: dspy.BaseLM,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    remaining: Callable[[], float],
) -> AsyncIterator[None]:
    """Run one LM call (the block) on ``budget``: reserve its estimate first (``RateLimited``
    when there is no room), then settle what it spent, whatever the outcome. ``remaining``: the
    seconds left of the request's deadline, which bound the budget's storage calls."""
    estimate = estimate_tokens(lm, args, kwargs, budget.default_max_tokens)
    reserved = await budget.reserve(estimate, within=max(remaining(), 0.0))
    meter = _Meter(dspy.settings.usage_tracker)
    try:
        with dspy.context(usage_tracker=meter):
            yield
    finally:
        # Shielded: a cancelled call (client gone, deadline passed) still pays what it spent.
        with anyio.CancelScope(shield=True):
            try:
                await budget.settle(reserved, meter.spent, within=max(remaining(), _SETTLE_AT_LEAST))
            except Exception as exc:  # the storage failed: the call's own outcome stands
                logger.warning("the tokens of an LM call could not be charged: %s", type(exc).__name__)
