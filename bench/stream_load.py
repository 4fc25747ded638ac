"""Streams per second and time to first token under load: dspy-serve's ``/NAME/stream`` against
the same client reading the LM's own stream.

    python -m bench.stream_load --url http://127.0.0.1:8000/qa/stream --fake http://127.0.0.1:PORT \\
        --concurrency 64 --warmup 2 --duration 12

Three closed-loop windows of ``concurrency`` keep-alive SSE clients, one after another: the raw LM
stream (``POST /v1/chat/completions`` with ``stream: true``, straight to the fake LM), then
dspy-serve's stream, then the raw LM stream again. A shared machine drifts (the raw figure alone
spans 103-198 streams/s across runs on 2 cores), so the raw figure is the mean of the windows
before and after. Time to first token: the raw client's is when the answer's first character
arrives (past ``[[ ## answer ## ]]``), dspy-serve's the first ``token`` event; both count from
the request. Prints one JSON object with the three windows and issue #24's goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.httpclient import Connection, build_request, post_json, split_url
from bench.programs import QUESTION

__all__ = ["GOALS", "goals", "main", "measure_window"]

_HEADER = "[[ ## answer ## ]]"
# Issue #24: streams/s >= 0.9x raw; TTFT p50 <= raw + 40 ms; TTFT p99 <= 1.5x raw.
GOALS = {"streams_ratio_min": 0.9, "ttft_p50_extra_ms_max": 40.0, "ttft_p99_ratio_max": 1.5}


@dataclass
class Window:
    started: list[float] = field(default_factory=list)  # request start of each finished stream
    ended: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0


async def _raw_stream(connection: Connection, raw: bytes) -> float | None:
    """Read one raw LM stream; seconds to the answer's first character (None: it never came)."""
    start = time.perf_counter()
    status, chunks = await connection.stream(raw)
    buffer, text, first = b"", "", None
    async for chunk in chunks:
        buffer += chunk
        *frames, buffer = buffer.split(b"\n\n")
        for frame in frames:
            if first is not None or not frame.startswith(b"data: {"):
                continue
            choices = json.loads(frame[6:]).get("choices") or [{}]
            text += (choices[0].get("delta") or {}).get("content") or ""
            head = text.find(_HEADER)
            if head >= 0 and text[head + len(_HEADER) :].strip():
                first = time.perf_counter() - start
    return first if status == 200 else None


async def _server_stream(connection: Connection, raw: bytes) -> float | None:
    """Read one dspy-serve stream; seconds to its first ``token`` event (None: an error)."""
    start = time.perf_counter()
    status, chunks = await connection.stream(raw)
    first, failed, tail = None, False, b""
    async for chunk in chunks:
        seen = tail + chunk
        if first is None and b"event: token\n" in seen:
            first = time.perf_counter() - start
        failed = failed or b"event: error\n" in seen
        tail = seen[-16:]
    return None if status != 200 or failed else first


async def measure_window(
    url: str, body: bytes, *, raw_lm: bool, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """One closed-loop window: streams/s and TTFT percentiles of the streams that ended in it."""
    host, port, path = split_url(url)
    request = build_request("POST", host, port, path, body)
    read = _raw_stream if raw_lm else _server_stream
    window = Window()
    begin = time.perf_counter()
    measured_from, stop = begin + warmup, begin + warmup + duration

    async def client() -> None:
        connection = await Connection.open(host, port)
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    first = await asyncio.wait_for(read(connection, request), timeout=60)
                except (OSError, TimeoutError, ConnectionError):
                    window.errors += 1
                    await connection.close()
                    connection = await Connection.open(host, port)
                    continue
                ended = time.perf_counter()
                if measured_from <= ended <= stop:
                    if first is None:
                        window.errors += 1
                    else:
                        window.started.append(started)
                        window.ended.append(ended)
                        window.ttft.append(first)
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "streams": len(window.ended),
        "streams_per_s": round(len(window.ended) / duration, 1),
        "ttft_p50_ms": _percentile_ms(window.ttft, 50),
        "ttft_p99_ms": _percentile_ms(window.ttft, 99),
        "errors": window.errors,
    }


def _percentile_ms(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


def _mean(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((a + b) / 2, 1)


def goals(server: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Issue #24's goals: each with its value, its bound and whether it is met."""
    ratio = server["streams_per_s"] / raw["streams_per_s"] if raw["streams_per_s"] else None
    extra = (
        server["ttft_p50_ms"] - raw["ttft_p50_ms"]
        if server["ttft_p50_ms"] is not None and raw["ttft_p50_ms"] is not None
        else None
    )
    p99 = (
        server["ttft_p99_ms"] / raw["ttft_p99_ms"]
        if server["ttft_p99_ms"] is not None and raw["ttft_p99_ms"]
        else None
    )
    return {
        "streams_ratio": {
            "value": _round(ratio, 2),
            "bound": f">= {GOALS['streams_ratio_min']}",
            "met": ratio is not None and ratio >= GOALS["streams_ratio_min"],
        },
        "ttft_p50_extra_ms": {
            "value": _round(extra, 1),
            "bound": f"<= {GOALS['ttft_p50_extra_ms_max']:g}",
            "met": extra is not None and extra <= GOALS["ttft_p50_extra_ms_max"],
        },
        "ttft_p99_ratio": {
            "value": _round(p99, 2),
            "bound": f"<= {GOALS['ttft_p99_ratio_max']}",
            "met": p99 is not None and p99 <= GOALS["ttft_p99_ratio_max"],
        },
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def measure(url: str, fake: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    server_body = json.dumps({"inputs": {"question": QUESTION}}).encode()
    raw_body = json.dumps(
        {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    ).encode()
    raw_url = f"{fake}/v1/chat/completions"
    window = {"concurrency": concurrency, "warmup": warmup, "duration": duration}
    await post_json(f"{fake}/bench/reset", {})
    before = await measure_window(raw_url, raw_body, raw_lm=True, **window)
    await post_json(f"{fake}/bench/reset", {})
    server = await measure_window(url, server_body, raw_lm=False, **window)
    await post_json(f"{fake}/bench/reset", {})
    after = await measure_window(raw_url, raw_body, raw_lm=True, **window)
    await post_json(f"{fake}/bench/reset", {})  # the fake keeps every stream's chunks otherwise
    raw = {key: _mean(before[key], after[key]) for key in ("streams_per_s", "ttft_p50_ms", "ttft_p99_ms")}
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "raw_before": before,
        "server": server,
        "raw_after": after,
        "raw": raw,
        "goals": goals(server, raw),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="dspy-serve's http://127.0.0.1:PORT/NAME/stream")
    parser.add_argument("--fake", required=True, help="the bench fake LM's http://127.0.0.1:PORT")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=12.0)
    args = parser.parse_args(argv)
    split_url(args.fake)  # loopback only
    result = asyncio.run(measure(args.url, args.fake, args.concurrency, args.warmup, args.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
