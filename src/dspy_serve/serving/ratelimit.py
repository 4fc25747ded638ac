"""Rate limits per caller: requests per window, and LM tokens per window.

The caller is its API key's name, or its client address when keys are off. Counting uses the
``limits`` library: in this process by default, or in Redis (``rate_limit_storage``) so that
several workers and replicas share one budget. Refusals are 429 with ``Retry-After``; every
limited response carries the ``RateLimit-Limit``/``-Remaining``/``-Reset`` headers.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string

from dspy_serve.errors import RateLimited
from dspy_serve.settings import ServeSettings

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, settings: ServeSettings) -> None:
        self._requests: RateLimitItem | None = parse(settings.rate_limit) if settings.rate_limit else None
        self._tokens: RateLimitItem | None = (
            parse(settings.token_rate_limit) if settings.token_rate_limit else None
        )
        uri = settings.rate_limit_storage
        options = {"implementation": "redispy"} if uri.startswith(("redis", "rediss")) else {}
        self._storage = storage_from_string(f"async+{uri}", **options)
        # Requests: a moving window, where a refused request costs nothing. Tokens: a fixed window,
        # which counts every token spent, even past the limit (the call was already made).
        self._requests_limiter = MovingWindowRateLimiter(self._storage)
        self._limiter = FixedWindowRateLimiter(self._storage)

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def admit(self, caller: str, cost: int = 1) -> dict[str, str]:
        """Count ``cost`` requests for ``caller``; refuse when a budget is spent. Returns the headers."""
        headers: dict[str, str] = {}
        if self._tokens is not None and not await self._limiter.test(self._tokens, "tokens", caller):
            raise await self._refusal(self._tokens, "tokens", caller, "LM token budget spent")
        if self._requests is not None:
            if not await self._requests_limiter.hit(self._requests, "requests", caller, cost=cost):
                raise await self._refusal(self._requests, "requests", caller, "request rate limit reached")
            headers = await self._headers(self._requests, "requests", caller)
        return headers

    async def charge(self, caller: str, tokens: int) -> None:
        if self._tokens is not None and tokens > 0:
            await self._limiter.hit(self._tokens, "tokens", caller, cost=tokens)

    async def _headers(self, item: RateLimitItem, kind: str, caller: str) -> dict[str, str]:
        limiter = self._requests_limiter if kind == "requests" else self._limiter
        stats = await limiter.get_window_stats(item, kind, caller)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return {
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset),
        }

    async def _refusal(self, item: RateLimitItem, kind: str, caller: str, what: str) -> RateLimited:
        headers = await self._headers(item, kind, caller)
        wait = max(1, int(headers["RateLimit-Reset"]))
        return RateLimited(f"{what} ({item}); retry in {wait} s.", retry_after=wait, limit_headers=headers)
