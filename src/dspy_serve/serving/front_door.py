"""The front door: admit a caller to a program, and charge what the call spent.

Every call goes through here, from :func:`dspy_serve.serving.call.admit` (the one admission)
and :class:`~.accounts.CallAccounts`, so per-key restrictions, rate limits and token budgets
are written once and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspy_serve.errors import Forbidden, ModelNotAllowed
from dspy_serve.lm.budget import TokenBudget
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.ratelimit import RateLimiter
from dspy_serve.serving.token_budget import CallerTokenBudget
from dspy_serve.serving.usage import total_tokens

__all__ = ["FrontDoor", "total_tokens"]


class FrontDoor:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter if limiter.enabled else None

    async def admit(
        self,
        caller: Caller,
        program: str,
        model: str | None = None,
        *,
        requests: int = 1,
        served: Sequence[str] = (),
    ) -> dict[str, str]:
        """Refuse what the caller's key or budget does not allow; returns the RateLimit headers.
        ``served``: the models the server serves, of which a key limited to some models must
        serve one when the call names none."""
        key = caller.api_key
        if key is not None:
            if not key.may_call(program):
                raise Forbidden(f"this API key may not call {program!r}")
            model = key.model_for(model, served) if served else model
            if model is not None and not key.may_use(model):
                raise ModelNotAllowed(f"this API key may not use model {model!r}")
        if self._limiter is None:
            return {}
        return await self._limiter.admit(caller.identity, requests)

    def token_budget(self, caller: Caller, default_max_tokens: int) -> CallerTokenBudget | None:
        """The caller's token budget for one call, which each of its LM calls reserves from and
        settles to (None when tokens are not limited)."""
        if self._limiter is None:
            return None
        return self._limiter.token_budget(caller.identity, default_max_tokens)

    async def settle(
        self,
        caller: Caller,
        budget: TokenBudget | None,
        usage: Mapping[str, Mapping[str, Any]],
        cost: Mapping[str, Any],
        *,
        within: float,
    ) -> None:
        """Charge what a call spent, whatever its outcome, against the caller's budget: whatever
        its LM calls have not already settled themselves. (The request's own account is kept from
        the call's published record.)"""
        if budget is not None:
            await budget.settle_rest(total_tokens(usage), within=within)

    async def healthy(self) -> bool:
        """Whether the rate-limit storage answers (always, when it lives in this process)."""
        return self._limiter is None or await self._limiter.healthy()
