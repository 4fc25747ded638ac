"""Finished calls, published once: the one seam that metrics, the access log, capture,
versions and jobs read.

Every program call, whatever its wire (invoke, stream, batch item, ``/v1``, MCP, job item),
ends in exactly one :class:`FinishedCall` handed to every registered :class:`CallObserver`.
Observers run on the event loop right after the call ends, so they must not block: one that
does I/O queues the record and writes it elsewhere (see capture).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["CallObserver", "CallObservers", "FinishedCall"]

logger = logging.getLogger("dspy_serve")


@dataclass(frozen=True)
class FinishedCall:
    """What one program call did, as the caller saw it."""

    call_id: str  # minted by the server, unique per call (a batch item is a call)
    program: str
    version: str | None  # the answering version's sha256 (its artifact's), None when it has none
    key_name: str | None  # the API key's name, None without keys
    inputs: Mapping[str, Any]
    options: Mapping[str, Any]  # the per-request options the call ran with (model, temperature, ...)
    outputs: Mapping[str, Any] | None  # JSON values, None when the call failed
    error_code: str | None  # the ServeError's code, None when the call succeeded
    model: str | None  # the LM that served it
    usage: Mapping[str, int]  # prompt_tokens, completion_tokens, total_tokens (zeros when none)
    cost_usd: float | None  # None when the model has no known price
    latency_s: float
    started_at: float  # time.time() when the call was admitted
    wire: str  # "invoke", "stream", "batch", "openai", "mcp", "job", ...
    request_id: str | None = None
    trace: list[dict[str, Any]] | None = field(default=None)  # per-predictor steps, when one was taken
    # What metrics count per model: tokens and cost (``usage`` and ``cost_usd`` sum them), the
    # LM calls made and those DSPy's cache answered.
    usage_by_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cost_by_model: Mapping[str, float | None] = field(default_factory=dict)
    lm_calls: Mapping[str, int] = field(default_factory=dict)
    lm_cache_hits: Mapping[str, int] = field(default_factory=dict)
    reused: bool = False  # answered by the response cache or an identical call in flight: nothing spent
    version_name: str | None = None  # the answering version's name (X-Program-Version), #27
    # A shadow run (#27): the call_id of the served call whose inputs it ran on. Its answer was
    # recorded, never returned; its cost is counted apart.
    shadow_of: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


class CallObserver(Protocol):
    """Something that wants to know about every finished call. Must not block or raise."""

    def observe(self, call: FinishedCall) -> None: ...


class CallObservers:
    """The registered observers; one failing observer never fails a call or the others."""

    def __init__(self, observers: list[CallObserver] | None = None) -> None:
        self._observers: list[CallObserver] = list(observers or [])

    def add(self, observer: CallObserver) -> None:
        self._observers.append(observer)

    def publish(self, call: FinishedCall) -> None:
        for observer in self._observers:
            try:
                observer.observe(call)
            except Exception as exc:  # an observer's bug must not turn a served answer into an error
                logger.error("call observer %s failed: %s", type(observer).__name__, type(exc).__name__)
