"""The response cache and coalescing: throughput against hit ratio, CPU per hit, LM calls saved.

    python -m bench.cache                 # the figures alone (~1.5 min), printed as JSON
    python -m bench.cache load --url ... --hit-ratio 0.9 --concurrency 128 ...   # one load run

``bench.run`` calls :func:`measure` after the main grid. At 100 ms LM latency and c=128:

- **hit ratio**: dspy-serve with ``--temperature 0 --response-cache memory``; each request asks
  one of 16 *hot* questions with probability ``h`` (answered from the cache once warm) and a
  question never asked before otherwise (a miss). The hit ratio reported is what the server
  answered inside the window (its ``X-Cache`` headers), not ``h``. At h = 1 every request is a
  hit, so the server's CPU per request there is the whole cost of a hit: HTTP, validation, the
  key and the lookup.
- **the cache's own work**: the key (canonical JSON, sha256) and an in-memory lookup, timed in
  this process; that is what a hit adds to a request that never reaches DSPy.
- **coalescing**: every request asks the same question with the cache off, coalescing on (as
  shipped) against ``--no-coalesce-requests``: throughput and LM calls per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.httpclient import Connection, build_request, split_url
from bench.load import parse_watch, raise_fd_limit
from bench.loop import Worker, closed_loop
from bench.programs import QUESTION
from bench.systems import FakeProcess, System, run_driver, start_fake_lm, start_server

__all__ = ["CacheProfile", "measure", "run_load"]

HOT_QUESTIONS = 16
LATENCY = 0.1
CACHED = System(
    "dspy-serve cache",
    "dspy-serve",
    "predict",
    "/qa/invoke",
    args=("--temperature", "0", "--response-cache", "memory"),
    note="--temperature 0 --response-cache memory",
)
COALESCING = System(
    "dspy-serve coalescing",
    "dspy-serve",
    "predict",
    "/qa/invoke",
    args=("--temperature", "0"),
    note="as shipped",
)
NOT_COALESCING = System(
    "dspy-serve no coalescing",
    "dspy-serve",
    "predict",
    "/qa/invoke",
    args=("--temperature", "0", "--no-coalesce-requests"),
    note="--no-coalesce-requests",
)


@dataclass(frozen=True)
class CacheProfile:
    warmup: float
    duration: float
    concurrency: int = 128
    hit_ratios: tuple[float, ...] = (0.0, 0.5, 0.9, 1.0)


FULL = CacheProfile(warmup=2.0, duration=8.0)
QUICK = CacheProfile(warmup=1.0, duration=3.0, hit_ratios=(0.0, 0.9, 1.0))


# --- the load: hot questions with probability h, fresh ones otherwise ---------------------------------
class _Answers:
    """When each answer arrived and whether the server said it was a hit."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool]] = []


class MixWorker:
    """One keep-alive connection asking a hot question with probability ``hit_ratio``."""

    _fresh = itertools.count()

    def __init__(
        self, connection: Connection, url: str, hit_ratio: float, hot: int, answers: _Answers
    ) -> None:
        self._connection, self._hit_ratio, self._hot, self._answers = connection, hit_ratio, hot, answers
        self._host, self._port, self._path = split_url(url)
        self._random = random.Random()

    async def call(self) -> tuple[int, float | None]:
        if self._random.random() < self._hit_ratio:
            question = f"{QUESTION} (hot {self._random.randrange(self._hot)})"
        else:
            question = f"{QUESTION} (fresh {os.getpid()}-{next(self._fresh)})"
        body = json.dumps({"inputs": {"question": question}}).encode()
        response = await self._connection.request(
            build_request("POST", self._host, self._port, self._path, body)
        )
        self._answers.seen.append((time.monotonic(), response.headers.get("x-cache") == "hit"))
        retry_after = response.headers.get("retry-after")
        return response.status, float(retry_after) if retry_after else None

    async def close(self) -> None:
        await self._connection.close()


async def run_load(
    url: str,
    *,
    hit_ratio: float,
    hot: int,
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> dict[str, Any]:
    host, port, _ = split_url(url)
    answers = _Answers()

    async def new_worker() -> Worker:
        return MixWorker(await Connection.open(host, port), url, hit_ratio, hot, answers)

    start = time.monotonic()
    outcome = await closed_loop(
        new_worker, concurrency=concurrency, warmup=warmup, duration=duration, watch=watch
    )
    window = [hit for at, hit in answers.seen if start + warmup <= at <= start + warmup + duration]
    result = outcome.to_dict()
    result["hit_ratio_asked"] = hit_ratio
    result["hit_ratio"] = round(sum(window) / len(window), 3) if window else None
    result["answers_total"] = len(answers.seen)  # warm-up included, like the LM's count
    return result


# --- the cache's own work, in this process ----------------------------------------------------------
def own_work_us(rounds: int = 20_000) -> dict[str, float]:
    """Microseconds of the key and of an in-memory lookup, as a hit pays them."""
    import dspy

    from dspy_serve.serving.response_cache import _MemoryStore, call_key
    from dspy_serve.serving.runner import CallResult

    lm = dspy.LM("openai/fake-model", temperature=0.0, cache=False)
    inputs = {"question": QUESTION}
    store = _MemoryStore(10_000, 3600.0)
    key = call_key("qa", "0" * 64, inputs, lm)
    assert key is not None
    asyncio.run(store.put(key, CallResult({"answer": "Paris"}, {}, lm.model)))

    async def lookups() -> float:
        began = time.process_time()
        for _ in range(rounds):
            await store.get(key)
        return time.process_time() - began

    began = time.process_time()
    for _ in range(rounds):
        call_key("qa", "0" * 64, inputs, lm)
    keys = time.process_time() - began
    gets = asyncio.run(lookups())
    return {"key_us": round(keys / rounds * 1e6, 2), "lookup_us": round(gets / rounds * 1e6, 2)}


# --- the figures --------------------------------------------------------------------------------------
def _load(
    system_url: str, fake: FakeProcess, server_pid: int, profile: CacheProfile, **load: Any
) -> dict[str, Any]:
    args = ["-m", "bench.cache", "load", "--url", system_url]
    args += ["--concurrency", str(profile.concurrency), "--warmup", str(profile.warmup)]
    args += ["--duration", str(profile.duration), "--watch", f"server={server_pid}"]
    for name, value in load.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    timeout = profile.warmup + profile.duration + 90
    result = run_driver(args, timeout=timeout, label="bench.cache load")
    completed = result["completed"]
    cpu = result.pop("cpu_s").get("server")
    result["server_cpu_ms_per_req"] = round(cpu / completed * 1000, 3) if cpu and completed else None
    result["lm_requests"] = int(str(fake.stats()["requests_started"]))
    return result


def measure(profile: CacheProfile, logs: Path, log: Any = print, *, reverse: bool = False) -> dict[str, Any]:
    """Every figure of this module, with fresh servers against one fake LM at 100 ms.

    ``reverse`` measures the hit ratios and the coalescing pair in the opposite order (the rows
    come out in the usual order), so that repeated runs do not always favour the same one.
    """

    def ordered(items: Any) -> list[Any]:
        return list(reversed(items)) if reverse else list(items)

    fake = start_fake_lm(logs / "fake-lm-cache.log", latency=LATENCY)
    figures: dict[str, Any] = {"latency_s": LATENCY, "concurrency": profile.concurrency, "hit_ratio": []}
    try:
        for ratio in ordered(profile.hit_ratios):
            server = start_server(CACHED, fake.api_base, logs)  # a cold cache for each ratio
            try:
                fake.reset()
                log(f"cache: hit ratio asked {ratio:g} @ c={profile.concurrency}")
                result = _load(server.url, fake, server.pid, profile, hit_ratio=ratio)
            finally:
                server.stop()
            log(
                f"    {result['throughput']:.1f} req/s, hit ratio {result['hit_ratio']}, "
                f"p99 {result['p99_ms']} ms, server CPU {result['server_cpu_ms_per_req']} ms/req"
            )
            figures["hit_ratio"].append(result)
        figures["coalescing"] = []
        for system in ordered((COALESCING, NOT_COALESCING)):
            server = start_server(system, fake.api_base, logs)
            try:
                fake.reset()
                log(f"coalescing: {system.label}, one question @ c={profile.concurrency}")
                result = _load(server.url, fake, server.pid, profile, hit_ratio=1.0, hot_questions=1)
            finally:
                server.stop()
            result["system"] = system.label
            log(f"    {result['throughput']:.1f} req/s, {result['lm_requests']} LM calls")
            figures["coalescing"].append(result)
        figures["hit_ratio"].sort(key=lambda r: r["hit_ratio_asked"])
        figures["coalescing"].sort(key=lambda r: r["system"] != COALESCING.label)
    finally:
        fake.stop()
    figures["own_work"] = own_work_us()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("load", help="one closed-loop run (a child of measure)")
    load.add_argument("--url", required=True)
    load.add_argument("--hit-ratio", type=float, required=True)
    load.add_argument("--hot-questions", type=int, default=HOT_QUESTIONS)
    load.add_argument("--concurrency", type=int, required=True)
    load.add_argument("--warmup", type=float, default=2.0)
    load.add_argument("--duration", type=float, default=8.0)
    load.add_argument("--watch", action="append", default=[])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "load":
        raise_fd_limit()
        result = asyncio.run(
            run_load(
                args.url,
                hit_ratio=args.hit_ratio,
                hot=args.hot_questions,
                concurrency=args.concurrency,
                warmup=args.warmup,
                duration=args.duration,
                watch=parse_watch(args.watch),
            )
        )
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    import tempfile

    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-bench-cache-"))
    figures = measure(
        QUICK if args.quick else FULL, logs, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    json.dump(figures, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
