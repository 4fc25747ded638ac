"""Prometheus metrics for ``GET /metrics``.

Each app owns its registry (several apps may live in one process, as in tests). With several
worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (``dspy-serve run --workers`` does): every
process writes its samples there and ``/metrics`` on any worker aggregates them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from dspy_serve.serving.observers import FinishedCall

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry()
        if self.multiprocess_dir is not None:
            prometheus_multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            _forget_dead_processes(self.multiprocess_dir)
        # In multiprocess mode the samples go to files, which the collector above reads.
        own = None if self.multiprocess_dir is not None else self.registry
        self.requests = Counter(
            "dspy_serve_requests", "HTTP requests.", ["program", "endpoint", "status"], registry=own
        )
        self.latency = Histogram(
            "dspy_serve_request_duration_seconds",
            "HTTP request latency.",
            ["program", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.in_flight = Gauge(
            "dspy_serve_calls_in_flight", "Program calls running.", registry=own, multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            "dspy_serve_calls_queued",
            "Program calls waiting for a slot.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.lm_calls = Counter("dspy_serve_lm_calls", "LM calls made.", ["model"], registry=own)
        self.cache_hits = Counter(
            "dspy_serve_lm_cache_hits", "LM calls answered by DSPy's cache.", ["model"], registry=own
        )
        self.tokens = Counter("dspy_serve_lm_tokens", "LM tokens.", ["model", "direction"], registry=own)
        self.cost = Counter("dspy_serve_lm_cost_usd", "Estimated LM cost (USD).", ["model"], registry=own)
        self.response_cache = Counter(
            "dspy_serve_response_cache",
            "Response-cache lookups of deterministic calls, by result (hit or miss).",
            ["result"],
            registry=own,
        )
        self.coalesced = Counter(
            "dspy_serve_coalesced_calls",
            "Calls answered by an identical call already in flight (no program run of their own).",
            registry=own,
        )
        self.errors = Counter("dspy_serve_errors", "Errors by problem code.", ["code"], registry=own)
        # Per program version (#27): "served" calls answered callers, "shadow" runs were recorded only.
        self.version_calls = Counter(
            "dspy_serve_version_calls",
            "Program calls by the version that ran them, role (served or shadow) and outcome (ok or error).",
            ["program", "version", "role", "outcome"],
            registry=own,
        )
        self.version_latency = Histogram(
            "dspy_serve_version_call_duration_seconds",
            "Program call latency by version and role.",
            ["program", "version", "role"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.version_cost = Counter(
            "dspy_serve_version_cost_usd",
            "Estimated LM cost (USD) by program version and role: a shadow run's cost counted apart.",
            ["program", "version", "role"],
            registry=own,
        )
        self.shadow_skipped = Counter(
            "dspy_serve_shadow_skipped",
            "Shadow runs skipped because the server was busy (they never queue behind callers).",
            ["program"],
            registry=own,
        )

    def close(self) -> None:
        """This process's gauges stop counting (its counters stay: they are history)."""
        if self.multiprocess_dir is not None:
            prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), self.multiprocess_dir
            )

    def observe(self, call: FinishedCall) -> None:
        """A finished call's tokens, cost and LM calls (a :class:`~.observers.CallObserver`)."""
        for model, counts in call.usage_by_model.items():
            self.tokens.labels(model, "in").inc(counts.get("prompt_tokens") or 0)
            self.tokens.labels(model, "out").inc(counts.get("completion_tokens") or 0)
        for model, usd in call.cost_by_model.items():
            if usd:
                self.cost.labels(model).inc(usd)
        for model, count in call.lm_calls.items():
            self.lm_calls.labels(model).inc(count)
        for model, count in call.lm_cache_hits.items():
            if count:
                self.cache_hits.labels(model).inc(count)
        version, role = call.version_name or "-", "shadow" if call.shadow_of is not None else "served"
        self.version_calls.labels(call.program, version, role, "ok" if call.ok else "error").inc()
        self.version_latency.labels(call.program, version, role).observe(call.latency_s)
        if call.cost_usd:
            self.version_cost.labels(call.program, version, role).inc(call.cost_usd)

    def observe_request(
        self, program: str, endpoint: str, status: int, seconds: float, errors: list[str]
    ) -> None:
        """One finished request: its count and latency, and every error it reported."""
        self.requests.labels(program, endpoint, str(status)).inc()
        self.latency.labels(program, endpoint).observe(seconds)
        self.count_errors(errors)

    def count_errors(self, codes: list[str]) -> None:
        for code in codes:
            self.errors.labels(code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes killed before they could (a replica or worker that was
    SIGKILLed and replaced), or ``calls_in_flight`` would count their calls forever."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's
