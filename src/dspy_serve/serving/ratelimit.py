"""Rate limits per caller: requests per window, and LM tokens per window.

The caller is its API key's name, or its client address when keys are off. Counting uses the
``limits`` library: in this process by default, or in Redis (``rate_limit_storage``) so that
several workers and replicas share one budget. Refusals are 429 with ``Retry-After``; every
limited response carries the ``RateLimit-Limit``/``-Remaining``/``-Reset`` headers.

Tokens are reserved before each LM call (an estimate: its prompt plus ``max_tokens``) and settled
after it with what it spent, whatever its outcome (:mod:`dspy_serve.lm.budget`), so neither
concurrent calls of one key nor the many LM calls of one program can pass a budget that has no
room for them. Every storage call is bounded in time: a storage that is down or hung refuses the call with
a 503 rather than failing it with a 500 or holding it past its deadline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from limits import RateLimitItem, parse
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string

from dspy_serve.errors import RateLimited, ServeError, ServiceUnavailable
from dspy_serve.serving.token_budget import CallerTokenBudget
from dspy_serve.settings import ServeSettings

__all__ = ["RateLimiter"]

logger = logging.getLogger("dspy_serve.ratelimit")

_HEALTH_TTL = 1.0  # seconds a storage health check is reused


class RateLimiter:
    def __init__(self, settings: ServeSettings) -> None:
        self._requests: RateLimitItem | None = parse(settings.rate_limit) if settings.rate_limit else None
        self._tokens: RateLimitItem | None = (
            parse(settings.token_rate_limit) if settings.token_rate_limit else None
        )
        uri = settings.rate_limit_storage
        self._timeout = min(settings.rate_limit_storage_timeout, settings.timeout)
        self.shared = uri.startswith(("redis", "rediss"))
        options: dict[str, str | float] = {}
        if self.shared:
            # redis-py would otherwise wait on a dead or hung server for as long as TCP does.
            options = {
                "implementation": "redispy",
                "socket_timeout": self._timeout,
                "socket_connect_timeout": self._timeout,
            }
        storage = storage_from_string(f"async+{uri}", **options)
        assert isinstance(storage, AsyncStorage)
        self._storage = storage
        # Requests: a moving window, where a refused request costs nothing. Tokens: a fixed window,
        # which counts every token spent, even past the limit (the call was already made).
        self._requests_limiter = MovingWindowRateLimiter(self._storage)
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._health: tuple[float, bool] = (-math.inf, True)  # (checked at, answer)

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    @property
    def limits_tokens(self) -> bool:
        return self._tokens is not None

    def token_budget(self, caller: str, default_max_tokens: int) -> CallerTokenBudget | None:
        """One request's handle on ``caller``'s token budget (None when tokens are not limited);
        ``default_max_tokens``: the most an LM call that sets no ``max_tokens`` may spend."""
        return CallerTokenBudget(self, caller, default_max_tokens) if self._tokens is not None else None

    async def admit(self, caller: str, cost: int = 1) -> dict[str, str]:
        """Count ``cost`` requests for ``caller``; refuse when a budget is spent. Returns the headers."""
        headers: dict[str, str] = {}
        with self._storage_calls():
            if self._tokens is not None and not await self._limiter.test(self._tokens, "tokens", caller):
                raise await self._refusal(self._tokens, "tokens", caller, "LM token budget spent")
            if self._requests is not None:
                if not await self._requests_limiter.hit(self._requests, "requests", caller, cost=cost):
                    raise await self._refusal(
                        self._requests, "requests", caller, "request rate limit reached"
                    )
                headers = await self._headers(self._requests, "requests", caller)
        return headers

    async def reserve(self, caller: str, tokens: int, *, within: float) -> int:
        """Hold ``tokens`` of ``caller``'s budget for an LM call about to start; refuse (429) when
        they do not fit in what is left of it. Returns what was reserved, to :meth:`settle`.

        The first call of a window always fits: a budget smaller than one call's estimate then
        serves one call per window, not none ever."""
        if self._tokens is None:
            return 0
        key, expiry = self._tokens.key_for("tokens", caller), self._tokens.get_expiry()
        with self._storage_calls(within):
            # One atomic increment: concurrent calls see each other's reservations.
            count = await self._storage.incr(key, expiry, amount=tokens)
            if count > self._tokens.amount and count - tokens > 0:
                await self._storage.incr(key, expiry, amount=-tokens)
                raise await self._refusal(self._tokens, "tokens", caller, "LM token budget spent")
        return tokens

    async def settle(self, caller: str, reserved: int, spent: int, *, within: float) -> None:
        """Replace a reservation with what the LM call spent."""
        if self._tokens is None or spent == reserved:
            return
        key, expiry = self._tokens.key_for("tokens", caller), self._tokens.get_expiry()
        with self._storage_calls(within):
            count = await self._storage.incr(key, expiry, amount=spent - reserved)
            if count < 0:  # the window turned over while the call ran: start the new one at 0
                await self._storage.incr(key, expiry, amount=-count)

    async def healthy(self) -> bool:
        """Whether the storage answers (a PING for Redis), within the storage timeout. The answer
        is kept for a second, so frequent probes from many places cost one PING."""
        if not self.enabled or not self.shared:
            return True
        checked_at, answer = self._health
        if time.monotonic() - checked_at < _HEALTH_TTL:
            return answer
        try:
            with self._storage_calls():
                answer = bool(await self._storage.check())
        except ServiceUnavailable:
            answer = False
        self._health = (time.monotonic(), answer)
        return answer

    @contextmanager
    def _storage_calls(self, within: float | None = None) -> Iterator[None]:
        """Bound the storage calls of the block by the storage timeout (and ``within`` seconds,
        what is left of the request's deadline); a failure or timeout is a 503 and one log line."""
        bound = self._timeout if within is None else max(0.0, min(self._timeout, within))
        try:
            with anyio.fail_after(bound):
                yield
        except ServeError:
            raise
        except Exception as exc:  # whatever the storage client raises: the storage is unusable
            what = "did not answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            logger.warning("rate-limit storage unavailable: %s", what)
            raise ServiceUnavailable(
                "Rate limits cannot be counted right now (their storage is unavailable); retry shortly.",
                retry_after=1,
            ) from None

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
