"""The front door: admit a caller to a program, and charge what the call spent.

Every call goes through here, from :func:`dspy_serve.serving.call.admit` (the one admission)
and :class:`~.accounts.CallAccounts`, so per-key restrictions, rate limits and token budgets
are written once and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_serve.errors import Forbidden, ModelNotAllowed
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.ratelimit import RateLimiter
from dspy_serve.serving.usage import total_tokens

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
        """Charge what a call spent, whatever its outcome, in place of its reservation, against
        the caller's budget. (The request's own account is kept from the call's published record.)"""
        if self._limiter is not None:
            await self._limiter.settle(caller.identity, reserved, total_tokens(usage), within=within)

    async def healthy(self) -> bool:
        """Whether the rate-limit storage answers (always, when it lives in this process)."""
        return self._limiter is None or await self._limiter.healthy()
