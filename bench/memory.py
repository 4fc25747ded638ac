"""Does dspy-serve's memory stay flat under sustained load?

    .venv/bin/python -m bench.memory [--requests 10000] [--concurrency 32]

Serves ``Predict("question -> answer")`` on the fake LM (10 ms latency, its own process) and
sends ``--requests`` invokes, each with a different question (no cache can help), from a raw
keep-alive client; prints the server's resident memory after a warm-up, at the middle and at
the end, and writes the table to ``bench/results/memory-latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.httpclient import LOOPBACK, Connection, build_request, free_port, get_json
from bench.procstat import rss_mb
from bench.systems import PROGRAMS_FILE, ROOT, child_env, spawn, start_fake_lm, stop_process

RESULTS = ROOT / "bench" / "results"


async def _drive(port: int, first: int, count: int, concurrency: int) -> int:
    """Send requests ``first`` .. ``first + count - 1``; returns how many were not 200."""
    numbers = iter(range(first, first + count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        connection = await Connection.open(LOOPBACK, port)
        try:
            for number in numbers:
                body = json.dumps({"inputs": {"question": f"question number {number}?"}}).encode()
                response = await connection.request(build_request("POST", LOOPBACK, port, "/qa/invoke", body))
                failures += response.status != 200
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def _wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if asyncio.run(get_json(f"http://{LOOPBACK}:{port}/health/ready")).status == 200:
                return
        except (TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("dspy-serve was not ready in time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-memory-"))
    fake = start_fake_lm(logs / "fake-lm.log", latency=0.01)
    port = free_port()
    argv_ = [
        sys.executable,
        "-m",
        "dspy_serve",
        "run",
        f"qa={PROGRAMS_FILE}:predict",
        "--model",
        "openai/fake-model",
    ]
    argv_ += ["--api-base", fake.api_base, "--host", LOOPBACK, "--port", str(port)]
    server = spawn(argv_, logs / "dspy-serve.log", env=child_env(DSPY_SERVE_LOG_LEVEL="warning"), cwd=logs)
    rows: list[tuple[str, int, float, float]] = []
    try:
        _wait_ready(port)
        started = time.monotonic()
        failures = asyncio.run(_drive(port, 0, 200, args.concurrency))  # warm-up: imports, pools, caches
        rows.append(("after 200 warm-up requests", 200, rss_mb(server.pid), time.monotonic() - started))
        half = args.requests // 2
        failures += asyncio.run(_drive(port, 200, half, args.concurrency))
        rows.append(("middle", 200 + half, rss_mb(server.pid), time.monotonic() - started))
        failures += asyncio.run(_drive(port, 200 + half, args.requests - half, args.concurrency))
        rows.append(("end", 200 + args.requests, rss_mb(server.pid), time.monotonic() - started))
    finally:
        stop_process(server)
        fake.stop()
    table = ["| point | requests served | server RSS (MiB) | elapsed (s) |", "|:---|---:|---:|---:|"]
    table += [f"| {point} | {served:,} | {rss:.1f} | {elapsed:.0f} |" for point, served, rss, elapsed in rows]
    growth = rows[-1][2] - rows[0][2]
    summary = (
        f"RSS grew {growth:+.1f} MiB over {args.requests:,} requests after the warm-up "
        f"(concurrency {args.concurrency}, fake LM latency 10 ms, failures {failures})."
    )
    report = "\n".join(["# Memory under sustained load", "", *table, "", summary, ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory-latest.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
