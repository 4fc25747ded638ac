"""Closed-loop HTTP load generator, run in its own process so its CPU is measured apart.

    python -m bench.load --url http://127.0.0.1:8000/qa/invoke --body '{"inputs": {"question": "?"}}' \
        --concurrency 32 --warmup 2 --duration 8 --watch server=1234 --watch fake=1235

Prints one JSON object (:class:`bench.loop.Outcome`) on stdout. Each of ``concurrency``
keep-alive connections sends its next request when the previous answer arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys

from bench.httpclient import Connection, build_request, split_url
from bench.loop import Outcome, Worker, closed_loop

__all__ = ["HttpWorker", "main", "run_load"]


class HttpWorker:
    """One keep-alive connection replaying the same pre-built request."""

    def __init__(self, connection: Connection, raw: bytes) -> None:
        self._connection = connection
        self._raw = raw

    async def call(self) -> tuple[int, float | None]:
        response = await self._connection.request(self._raw)
        retry_after = response.headers.get("retry-after")
        return response.status, float(retry_after) if retry_after else None

    async def close(self) -> None:
        await self._connection.close()


async def run_load(
    url: str, body: bytes, *, concurrency: int, warmup: float, duration: float, watch: dict[str, int]
) -> Outcome:
    host, port, path = split_url(url)
    raw = build_request("POST", host, port, path, body)

    async def new_worker() -> Worker:
        return HttpWorker(await Connection.open(host, port), raw)

    return await closed_loop(
        new_worker, concurrency=concurrency, warmup=warmup, duration=duration, watch=watch
    )


def parse_watch(items: list[str]) -> dict[str, int]:
    """``["server=12", "fake=34"]`` -> ``{"server": 12, "fake": 34}``."""
    return {label: int(pid) for label, _, pid in (item.partition("=") for item in items)}


def raise_fd_limit() -> None:
    """512 connections need more than the usual 1024-descriptor soft limit leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--watch", action="append", default=[], help="LABEL=PID to measure (repeatable)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    outcome = asyncio.run(
        run_load(
            args.url,
            args.body.encode(),
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
            watch=parse_watch(args.watch),
        )
    )
    json.dump(outcome.to_dict(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
