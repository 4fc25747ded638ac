"""The whole-program response cache: a deterministic call answered again without running it.

This is not DSPy's LM cache (the ``cache`` setting, off by default), which remembers single LM
requests inside a program run: this one remembers a whole call's checked outputs, so a hit costs
no program run, no adapter work, no LM call and no tokens.

A call may be answered from here (or share an identical call in flight, :mod:`.coalescing`) only
when it is deterministic: its effective temperature (the request's option, else the server's
``temperature``, else the LM's own) is 0, unless the operator opted in with
``response_cache_any_temperature``. Its key is everything that decides the answer: the program,
its version (artifact, state and interface), the inputs as canonical JSON, and the LM with its
request parameters (model, temperature, max_tokens, ...). A new artifact is a new version, so
its answers never come from the old one's entries.

Entries live in this process (a size-bounded LRU) or in Redis, shared by workers and replicas.
Redis is bounded in time like the rate-limit storage: when it is down or slow a lookup is a
miss and a store is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import dspy

from dspy_serve.serving import pricing
from dspy_serve.serving.dspy_json import to_wire
from dspy_serve.serving.loader import LoadedProgram
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.schema import ProgramInterface
from dspy_serve.settings import ServeSettings

__all__ = ["ResponseCache", "call_key", "deterministic", "program_version", "shared_answer"]

logger = logging.getLogger("dspy_serve.response_cache")

_REDIS_PREFIX = "dspy-serve:response:"
_REST_AFTER_FAILURE = 1.0  # seconds
_NO_COST = pricing.estimate({})


def deterministic(lm: dspy.BaseLM, any_temperature: bool) -> bool:
    """Whether answers of this LM may be reused: temperature 0, or the operator said any goes.
    (The LM holds the effective temperature: the request's, else the server's, else its own;
    none at all means the provider's default, which is not 0.)"""
    return any_temperature or lm.kwargs.get("temperature") == 0


def program_version(loaded: LoadedProgram, interface: ProgramInterface) -> str:
    """What identifies this version of a program, computed once: its artifact's sha256, its
    state (instructions, demos) and its interface. A program that cannot dump its state is
    versioned by the other two."""
    digest = hashlib.sha256()
    digest.update((loaded.artifact.sha256 if loaded.artifact else "-").encode())
    for schema in (interface.inputs.model_json_schema(), interface.outputs.model_json_schema()):
        digest.update(json.dumps(schema, sort_keys=True).encode())
    try:
        state = json.dumps(loaded.module.dump_state(), sort_keys=True, default=_not_json)
    except Exception:  # a custom module's state DSPy cannot dump: the artifact and interface decide
        state = "-"
    digest.update(state.encode())
    return digest.hexdigest()


def call_key(program: str, version: str, inputs: dict[str, Any], lm: dspy.BaseLM) -> str | None:
    """The key of one call, or None when its inputs have no canonical JSON form."""
    try:
        canonical = json.dumps(
            [program, version, to_wire(inputs), lm.model, lm.kwargs],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_not_json,
        )
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(canonical.encode()).hexdigest()


def shared_answer(result: CallResult) -> CallResult:
    """A call's answer as given to a caller whose request did not run it: no usage, no cost."""
    return CallResult(result.outputs, {}, result.model, cost=_NO_COST)


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


class _Store(Protocol):
    async def get(self, key: str) -> CallResult | None: ...

    async def put(self, key: str, result: CallResult) -> None: ...

    async def aclose(self) -> None: ...


class ResponseCache:
    """Answers by key, in memory or in Redis; every failure of the storage is a miss."""

    def __init__(self, settings: ServeSettings) -> None:
        where = settings.response_cache
        self._store: _Store = (
            _MemoryStore(settings.response_cache_entries, settings.response_cache_ttl)
            if where == "memory"
            else _RedisStore(where, settings.response_cache_ttl, settings.response_cache_timeout)
        )

    async def get(self, key: str) -> CallResult | None:
        """The stored answer, as a hit: outputs and model, no usage, no cost."""
        return await self._store.get(key)

    async def put(self, key: str, result: CallResult) -> None:
        await self._store.put(key, shared_answer(result))

    async def aclose(self) -> None:
        await self._store.aclose()


class _MemoryStore:
    """A size-bounded LRU with a time to live. Its answers are shared objects: read-only."""

    def __init__(self, entries: int, ttl: float) -> None:
        self._entries: OrderedDict[str, tuple[float, CallResult]] = OrderedDict()
        self._size, self._ttl = entries, ttl

    async def get(self, key: str) -> CallResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, result = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result

    async def put(self, key: str, result: CallResult) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        self._entries.clear()


class _RedisStore:
    """Answers as JSON in Redis, shared by every worker and replica that points at it, each
    expiring after the time to live. Every call is bounded by ``timeout``."""

    def __init__(self, url: str, ttl: float, timeout: float) -> None:
        import redis.asyncio

        # redis-py would otherwise wait on a dead or hung server for as long as TCP does.
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._ttl_ms, self._timeout = max(1, int(ttl * 1000)), timeout
        self._failing = False
        self._resting_until = 0.0  # after a failure, calls skip Redis for a moment

    async def get(self, key: str) -> CallResult | None:
        data = await self._bounded(lambda: self._redis.get(_REDIS_PREFIX + key))
        if not isinstance(data, bytes):
            return None
        try:
            stored = json.loads(data)
            return shared_answer(CallResult(stored["outputs"], {}, stored["model"]))
        except (ValueError, KeyError, TypeError):  # not ours, or from an incompatible version
            return None

    async def put(self, key: str, result: CallResult) -> None:
        data = json.dumps({"outputs": result.outputs, "model": result.model}, ensure_ascii=False)
        await self._bounded(lambda: self._redis.set(_REDIS_PREFIX + key, data, px=self._ttl_ms))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _bounded(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one command within the timeout; a failure is None and one log line per outage.
        After a failure Redis is left alone for a second, so a hung server costs each call
        nothing rather than the timeout."""
        if time.monotonic() < self._resting_until:
            return None
        try:
            with anyio.fail_after(self._timeout):
                answer = await command()
        except Exception as exc:  # whatever redis-py raises: the storage is unusable right now
            if not self._failing:
                what = "did not answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
                logger.warning("response cache storage unavailable (%s): calls run uncached", what)
            self._failing = True
            self._resting_until = time.monotonic() + _REST_AFTER_FAILURE
            return None
        if self._failing:
            logger.info("response cache storage answers again")
            self._failing = False
        return answer
