"""The closed loop shared by the HTTP load generator and the in-process ceiling.

``concurrency`` workers each send their next request as soon as the previous answer arrives,
for ``warmup + duration`` seconds. Only answers that arrive inside the measured window (after
the warm-up) count; what is still running at the end is cancelled and reported as
``unfinished``. CPU time and memory of watched processes are read at the window's two edges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bench.procstat import cpu_seconds, rss_mb, self_cpu_seconds

__all__ = ["Outcome", "Worker", "closed_loop", "percentile"]

CONNECTION_ERROR = 0  # the status recorded when no HTTP status came back
_ERROR_BACKOFF = 0.1  # seconds a worker waits after an error, so refusals do not become a busy loop
_MAX_RETRY_AFTER = 1.0


class Worker(Protocol):
    async def call(self) -> tuple[int, float | None]:
        """One request: (HTTP status, Retry-After seconds or None). Raises OSError on transport failure."""

    async def close(self) -> None: ...


@dataclass
class Outcome:
    """What one closed-loop run measured; latencies are of successful (2xx) answers only."""

    concurrency: int
    duration: float
    completed: int = 0
    throughput: float = 0.0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    error_statuses: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    loadgen_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # per watched process, inside the window
    rss_mb: dict[str, float] = field(default_factory=dict)  # per watched process, at the window's end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class _Sample:
    end: float
    latency: float
    status: int


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def closed_loop(
    new_worker: Callable[[], Awaitable[Worker]],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> Outcome:
    """Run the loop; ``watch`` maps a label to a PID whose CPU and RSS are measured in the window."""
    start = time.monotonic()
    window_start, end = start + warmup, start + warmup + duration
    samples: list[_Sample] = []
    busy = [0]  # workers inside a call right now

    async def run_worker() -> None:
        worker: Worker | None = None
        try:
            while time.monotonic() < end:
                began = time.monotonic()
                busy[0] += 1
                try:
                    if worker is None:
                        worker = await new_worker()
                    status, retry_after = await worker.call()
                except (OSError, asyncio.IncompleteReadError):
                    status, retry_after = CONNECTION_ERROR, None
                    if worker is not None:
                        await worker.close()
                    worker = None
                finally:
                    busy[0] -= 1
                samples.append(_Sample(time.monotonic(), time.monotonic() - began, status))
                if not 200 <= status < 300:
                    backoff = min(retry_after, _MAX_RETRY_AFTER) if retry_after else _ERROR_BACKOFF
                    await asyncio.sleep(backoff)
        finally:
            if worker is not None:
                await worker.close()

    def snapshot() -> dict[str, float]:
        return {label: cpu_seconds(pid) for label, pid in watch.items()} | {"__loadgen__": self_cpu_seconds()}

    tasks = [asyncio.create_task(run_worker()) for _ in range(concurrency)]
    await _sleep_until(window_start)
    before = snapshot()
    await _sleep_until(end)
    after = snapshot()
    memory = {label: rss_mb(pid) for label, pid in watch.items()}
    unfinished = busy[0]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return _summarize(samples, concurrency, duration, window_start, end, before, after, memory, unfinished)


def _summarize(
    samples: list[_Sample],
    concurrency: int,
    duration: float,
    window_start: float,
    end: float,
    before: dict[str, float],
    after: dict[str, float],
    memory: dict[str, float],
    unfinished: int,
) -> Outcome:
    inside = [s for s in samples if window_start <= s.end <= end]
    ok = sorted(round(s.latency * 1000, 2) for s in inside if 200 <= s.status < 300)
    statuses: dict[str, int] = {}
    for sample in inside:
        if not 200 <= sample.status < 300:
            key = "connection" if sample.status == CONNECTION_ERROR else str(sample.status)
            statuses[key] = statuses.get(key, 0) + 1
    cpu = {label: round(after[label] - before[label], 3) for label in before if label != "__loadgen__"}
    return Outcome(
        concurrency=concurrency,
        duration=duration,
        completed=len(ok),
        throughput=round(len(ok) / duration, 2),
        mean_ms=round(sum(ok) / len(ok), 2) if ok else None,
        p50_ms=percentile(ok, 50),
        p90_ms=percentile(ok, 90),
        p99_ms=percentile(ok, 99),
        max_ms=ok[-1] if ok else None,
        errors=sum(statuses.values()),
        error_statuses=statuses,
        unfinished=unfinished,
        loadgen_cpu_s=round(after["__loadgen__"] - before["__loadgen__"], 3),
        cpu_s=cpu,
        rss_mb={label: round(value, 1) for label, value in memory.items()},
    )
