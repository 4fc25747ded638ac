"""One request's handle on its caller's token budget, carried by the request's scope.

The front door makes one per call when a token budget applies; every LM call of the request
reserves from it and settles to it (:mod:`dspy_serve.lm.budget`), and when the call ends
:meth:`CallerTokenBudget.settle_rest` charges whatever tokens the LM calls did not settle
themselves (a sync LM call made on the event loop, or usage reported outside an LM call), so
the request is charged exactly what it spent, whatever its outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dspy_serve.serving.ratelimit import RateLimiter

__all__ = ["CallerTokenBudget"]


class CallerTokenBudget:
    def __init__(self, limiter: RateLimiter, identity: str, default_max_tokens: int) -> None:
        self._limiter = limiter
        self._identity = identity
        self._default_max_tokens = default_max_tokens
        self.charged = 0  # tokens settled so far by this request's LM calls

    @property
    def default_max_tokens(self) -> int:
        return self._default_max_tokens

    async def reserve(self, tokens: int, *, within: float) -> int:
        return await self._limiter.reserve(self._identity, tokens, within=within)

    async def settle(self, reserved: int, spent: int, *, within: float) -> None:
        self.charged += spent  # counted first: a failed storage call must not charge it twice
        await self._limiter.settle(self._identity, reserved, spent, within=within)

    async def settle_rest(self, spent: int, *, within: float) -> None:
        """Charge what the request spent (``spent``, all its usage) beyond what its LM calls
        have already settled."""
        rest = spent - self.charged
        if rest > 0:
            await self.settle(0, rest, within=within)
