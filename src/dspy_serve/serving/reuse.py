"""Where a deterministic call's answer may come from instead of running it again: the response
cache (:mod:`.response_cache`) and an identical call in flight (:mod:`.coalescing`).

:class:`~dspy_serve.serving.call.Call` asks here first for every call, so every front end
(``/NAME/invoke``, batch items, ``/v1``, MCP, and streams for the cache) gets both. A caller's
``Cache-Control: no-cache`` runs its call afresh (no lookup, no joining); ``no-store`` keeps its
answer out of the cache. A reused answer reports no usage and no cost, and charges no tokens:
the call that ran was charged, once, to the caller who ran it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import dspy

from dspy_serve.errors import RateLimited, ServeError
from dspy_serve.lm.held import held_lms
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.coalescing import Flights
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.programs import Program
from dspy_serve.serving.response_cache import (
    ResponseCache,
    call_key,
    deterministic,
    shared_answer,
)
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.versions import ProgramVersion
from dspy_serve.settings import ServeSettings

__all__ = ["Reuse"]


class Reuse:
    """The response cache (when on) and the calls in flight (when coalescing), for one service."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.cache = ResponseCache(settings) if settings.response_cache != "off" else None
        self.flights = Flights() if settings.coalesce_requests else None
        self._any_temperature = settings.response_cache_any_temperature
        # A version that holds an LM of its own samples with that LM's temperature, whatever the
        # request's: its answers are reused only when every held LM is at temperature 0. Known
        # per version (by fingerprint), as versions load.
        self._sampling: dict[str, bool] = {}
        self._hits, self._misses = metrics.response_cache.labels("hit"), metrics.response_cache.labels("miss")
        self._coalesced = metrics.coalesced

    @classmethod
    def of(cls, settings: ServeSettings, metrics: Metrics) -> Reuse | None:
        """The service's reuse, or None when both the cache and coalescing are off."""
        if settings.response_cache == "off" and not settings.coalesce_requests:
            return None
        return cls(settings, metrics)

    def key(
        self,
        program: Program,
        version: ProgramVersion,
        inputs: dict[str, Any],
        lm: dspy.BaseLM,
        caller: Caller,
    ) -> str | None:
        """The call's key, or None when its answer may not be reused: not deterministic, no
        canonical form, or the caller asked for a fresh run (``no-cache``). Each version of a
        program has keys of its own."""
        if not deterministic(lm, self._any_temperature) or self._samples(version):
            return None
        if not caller.cache_control.read:
            caller.note_reuse(False)
            return None
        key = call_key(program.name, version.fingerprint, inputs, lm)
        if key is None:
            caller.note_reuse(False)
        return key

    def _samples(self, version: ProgramVersion) -> bool:
        samples = self._sampling.get(version.fingerprint)
        if samples is None:
            held = held_lms(version.loaded.module)
            samples = not all(deterministic(h.lm, self._any_temperature) for h in held)
            self._sampling[version.fingerprint] = samples
        return samples

    async def cached(self, key: str, caller: Caller) -> CallResult | None:
        """The stored answer, counted as a hit or a miss."""
        if self.cache is None:
            return None
        answer = await self.cache.get(key)
        if answer is None:
            self._misses.inc()
            return None
        self._hits.inc()
        caller.note_reuse(True)
        return answer

    async def answer(self, key: str, caller: Caller) -> CallResult | None:
        """The stored answer, or that of the identical call in flight; None: run it."""
        answer = await self.cached(key, caller)
        if answer is not None or self.flights is None:
            return answer
        joined = self.flights.join(key)
        if joined is None:
            return None
        try:
            result = await joined
        except RateLimited:
            return None  # the first caller's own budget refused that call: this one runs on its own
        except ServeError as exc:
            raise _unspent(exc) from exc
        self._coalesced.inc()
        caller.note_reuse(True, coalesced=True)
        return shared_answer(result)

    async def run(self, key: str, caller: Caller, call: Coroutine[Any, Any, CallResult]) -> CallResult:
        """Run ``call`` for this caller (as the flight others may join), then keep its answer."""
        caller.note_reuse(False)
        stored = self._stored(key, caller, call)
        return await (self.flights.lead(key, stored) if self.flights is not None else stored)

    async def store(self, key: str, caller: Caller, result: CallResult) -> None:
        if self.cache is not None and caller.cache_control.store:
            await self.cache.put(key, result)

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()

    async def _stored(self, key: str, caller: Caller, call: Coroutine[Any, Any, CallResult]) -> CallResult:
        result = await call
        # Kept before the flight lands, so an identical call from now on finds it.
        await self.store(key, caller, result)
        return result


def _unspent(error: ServeError) -> ServeError:
    """The shared call's error as one of its other waiters reports it: the same problem, without
    the tokens it spent (they were charged to the caller who ran it)."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    copy.usage = None
    return copy
