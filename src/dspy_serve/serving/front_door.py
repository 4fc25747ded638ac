"""The front door: admit a caller to a program, and charge what the call spent.

Every front end (the program routes, OpenAI-compatible ``/v1``, MCP, and whatever comes next)
goes through here, so per-key restrictions, rate limits, token budgets and accounting are
written once and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_serve.errors import Forbidden, ModelNotAllowed
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.ratelimit import RateLimiter

__all__ = ["FrontDoor", "total_tokens"]


class FrontDoor:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter if limiter.enabled else None

    async def admit(
        self, caller: Caller, program: str, model: str | None = None, *, requests: int = 1
    ) -> dict[str, str]:
        """Refuse what the caller's key or budget does not allow; returns the RateLimit headers."""
        key = caller.api_key
        if key is not None:
            if not key.may_call(program):
                raise Forbidden(f"this API key may not call {program!r}")
            if model is not None and not key.may_use(model):
                raise ModelNotAllowed(f"this API key may not use model {model!r}")
        if self._limiter is None:
            return {}
        return await self._limiter.admit(caller.identity, requests)

    async def reserve(self, caller: Caller, max_tokens: int, *, within: float) -> int:
        """Hold one call's worth of tokens (its ``max_tokens``) of the caller's token budget
        before the call starts; 429 when the budget has no room. Returns what to settle."""
        if self._limiter is None:
            return 0
        return await self._limiter.reserve(caller.identity, max_tokens, within=within)

    async def settle(
        self,
        caller: Caller,
        reserved: int,
        usage: Mapping[str, Mapping[str, Any]],
        cost: Mapping[str, Any],
        *,
        within: float,
    ) -> None:
        """Charge what a call spent, whatever its outcome, in place of its reservation: against
        the caller's budget and in its accounting."""
        tokens = total_tokens(usage)
        caller.record(tokens, cost.get("total_usd"))
        if self._limiter is not None:
            await self._limiter.settle(caller.identity, reserved, tokens, within=within)

    async def healthy(self) -> bool:
        """Whether the rate-limit storage answers (always, when it lives in this process)."""
        return self._limiter is None or await self._limiter.healthy()


def total_tokens(usage: Mapping[str, Mapping[str, Any]]) -> int:
    total = 0
    for counts in usage.values():
        spent = counts.get("total_tokens")
        if not isinstance(spent, int):
            spent = (counts.get("prompt_tokens") or 0) + (counts.get("completion_tokens") or 0)
        total += spent
    return total
