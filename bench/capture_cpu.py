"""CPU per captured call, measured in-process: robust where bench.capture_ab's A/B is noisy.

    python -m bench.capture_cpu [--calls 6000 --rate 1000 --rounds 2 --profile 25]

Feeds finished calls shaped like bench's qa calls (its question, a one-step trace) to the real
:class:`~dspy_serve.data.capture.Capture` at ``--rate`` calls per second (in 10 ms ticks, as
calls finish under load), writing to a SQLite store in a temporary directory, then stops it
(everything queued is written). The same loop without capture is the baseline. Prints a Markdown
table: process CPU microseconds (every thread: the row-building worker and aiosqlite's too) per
captured call, with and without traces; with ``--profile N``, the N costliest functions by their
own time (cProfile, this thread only) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
import uuid

from bench.programs import QUESTION
from dspy_serve.data.capture import Capture
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.observers import FinishedCall
from dspy_serve.settings import ServeSettings

__all__ = ["main", "measure"]

TICK = 0.01  # seconds between two bursts of finished calls


def _call(trace: bool) -> FinishedCall:
    step = {"predictor": "predict", "inputs": {"question": QUESTION}, "outputs": {"answer": "Paris"}}
    return FinishedCall(
        call_id=uuid.uuid4().hex,
        program="qa",
        version=None,
        key_name=None,
        inputs={"question": QUESTION},
        options={},
        outputs={"answer": "Paris"},
        error_code=None,
        model="openai/gpt-4o-mini",
        usage={"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140},
        cost_usd=0.00003,
        latency_s=0.1,
        started_at=time.time(),
        wire="invoke",
        request_id=uuid.uuid4().hex,
        trace=[step] if trace else None,
    )


async def measure(
    calls: int, rate: float, *, capture: bool, trace: bool, profile: cProfile.Profile | None = None
) -> float:
    """Process CPU microseconds per call fed at ``rate``, capture on or off."""
    finished = [_call(trace) for _ in range(calls)]
    capturing = None
    if capture:
        settings = ServeSettings(capture=["*"], capture_trace=trace, data_dir=tempfile.mkdtemp())
        capturing = Capture(settings, Metrics())
        await capturing.start()
    per_tick = max(1, round(rate * TICK))
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for first in range(0, calls, per_tick):
        if capturing is not None:
            for call in finished[first : first + per_tick]:
                capturing.observe(call)
        await asyncio.sleep(TICK)
    if capturing is not None:
        await capturing.stop()
    spent = time.process_time() - started
    if profile is not None:
        profile.disable()
    return spent / calls * 1e6


async def _main(args: argparse.Namespace) -> str:
    rows = []
    profile = cProfile.Profile() if args.profile else None
    for round_ in range(1, args.rounds + 1):
        for trace in (False, True):
            off = await measure(args.calls, args.rate, capture=False, trace=trace)
            on = await measure(args.calls, args.rate, capture=True, trace=trace, profile=profile)
            label = "traces" if trace else "no traces"
            rows.append(f"| {round_} | {label} | {off:.1f} | {on:.1f} | {on - off:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    if profile is not None:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
    return "\n".join(
        [
            f"{args.calls} calls at {args.rate:g}/s, SQLite store\n",
            "| round | capture | CPU us/call off | CPU us/call on | capture's share |",
            "|---:|:---|---:|---:|---:|",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=1000.0, help="finished calls per second")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    print(asyncio.run(_main(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
