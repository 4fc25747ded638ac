"""Interactive latency with and without a large job running (issue #28: jobs never starve
interactive traffic).

    python -m bench.jobs [--latency 0.1] [--clients 16] [--seconds 20] [--items 20000] [--job-concurrency 8]

One server (``dspy-serve run --jobs``, a SQLite store in a temporary directory) on the fake LM
(its own process). ``--clients`` concurrent clients call ``/qa/invoke`` for ``--seconds``, once
with the server idle, once while a job of ``--items`` items runs; then the job is cancelled.
Prints one JSON object: p50 / p99 (ms) and throughput of the interactive calls, each time, and
the job's progress while they were measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.systems import MODEL, PROGRAMS_FILE, ROOT, child_env, start_fake_lm


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def interactive(url: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient, number: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            answer = await http.post(
                "/qa/invoke", json={"inputs": {"question": f"Interactive {number}-{i}?"}}
            )
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            i += 1

    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)
    ) as http:
        await asyncio.gather(*(client(http, n) for n in range(clients)))
    latencies.sort()
    return {
        "calls": len(latencies),
        "errors": errors,
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--job-concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        work = Path(tmp)
        fake = start_fake_lm(work / "fake-lm.log", latency=args.latency)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv_ = [
            sys.executable,
            "-m",
            "dspy_serve",
            "run",
            f"qa={PROGRAMS_FILE}:predict",
            "--port",
            str(port),
        ]
        argv_ += [
            "--model",
            MODEL,
            "--api-base",
            fake.api_base,
            "--jobs",
            "--store",
            f"sqlite:///{work / 's.db'}",
        ]
        argv_ += ["--job-concurrency", str(args.job_concurrency), "--max-in-flight", "128"]
        argv_ += ["--log-level", "warning"]
        with (work / "server.log").open("w") as log:
            server = subprocess.Popen(argv_, env=child_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
            idle = asyncio.run(interactive(url, args.clients, args.seconds))
            items = [{"question": f"Job item {i}?"} for i in range(args.items)]
            job_id = httpx.post(f"{url}/qa/jobs", json={"items": items}, timeout=120).json()["id"]
            before = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
            busy = asyncio.run(interactive(url, args.clients, args.seconds))
            after = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
            httpx.delete(f"{url}/jobs/{job_id}", timeout=30)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            fake.stop()
    job_rate = (after["done"] + after["failed"] - before["done"] - before["failed"]) / args.seconds
    result = {
        "latency_s": args.latency,
        "clients": args.clients,
        "job_concurrency": args.job_concurrency,
        "interactive_idle": idle,
        "interactive_with_job": busy,
        "job_items_per_s": round(job_rate, 1),
        "job_ceiling_items_per_s": round(args.job_concurrency / args.latency, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
