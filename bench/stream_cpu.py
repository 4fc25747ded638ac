"""The server's CPU per streamed LM chunk, measured in-process: robust on a loaded machine.

    python -m bench.stream_cpu [--streams 20 --answer-chars 4000 --concurrency 4 --profile 25]

A fake LM (bench.fake_lm_server, a process of its own so its CPU is not counted) streams a long
answer in 4-character chunks with no delay. This process serves ``dspy.Predict("question ->
answer")`` through :class:`~dspy_serve.serving.service.Service` (DSPy's real ``dspy.LM`` path,
our stream pipeline) and encodes every event as ``/NAME/stream`` does (SSE framing); only the
HTTP server around it is missing. Then the same streams are read by DSPy alone (``dspy.Predict``
with a stream to send chunks to): its LM client's parsing is a floor no server goes under.
Prints JSON: CPU microseconds per LM chunk (process CPU time, not wall time) of the whole, of
DSPy alone and of the difference (dspy-serve's share); with ``--profile N``, the N costliest
functions by their own time (cProfile) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy

from bench.httpclient import get_json
from bench.programs import QUESTION
from bench.systems import start_fake_lm

__all__ = ["main", "measure"]


async def _floor(service: Any, streams: int, concurrency: int) -> float:
    """CPU seconds of the same LM streams read by DSPy alone (``dspy.Predict`` with a stream to
    send chunks to, drained): what no server can spend less than, since DSPy's client parses
    each chunk. The rest of the server's CPU per chunk is dspy-serve's."""
    import anyio

    assert service.lms is not None
    lm = service.lms.select(None)
    predict = dspy.Predict("question -> answer")

    async def one(index: int) -> None:
        send, receive = anyio.create_memory_object_stream[Any](1000)

        async def drain() -> None:
            async with receive:
                async for _ in receive:
                    pass

        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            async with send:
                with dspy.context(lm=lm, send_stream=send):
                    await predict.acall(question=f"{QUESTION} floor {index}")

    async def worker(first: int) -> None:
        for index in range(first, streams, concurrency):
            await one(index)

    cpu = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.process_time() - cpu


async def _streams(
    base_url: str, streams: int, concurrency: int, profiler: cProfile.Profile | None
) -> tuple[int, int, float, float, float]:
    """(tokens, SSE bytes, CPU seconds, wall seconds, DSPy's own CPU seconds) of ``streams``
    streams after a warm-up."""
    from dspy_serve import ServeSettings
    from dspy_serve.serving.caller import Caller
    from dspy_serve.serving.events import Token
    from dspy_serve.serving.service import CallOptions, Service
    from dspy_serve.web.sse import ProgramEventEncoder

    settings = ServeSettings(model="openai/fake-model", api_base=base_url, lm_retries=0, timeout=120)
    service = Service(settings, {"qa": dspy.Predict("question -> answer")})
    await service.start()
    program = service.programs["qa"]
    tokens = 0
    sent = 0

    async def one(index: int) -> None:
        nonlocal tokens, sent
        encoder = ProgramEventEncoder("bench")
        call = service.stream(program, {"question": f"{QUESTION} {index}"}, CallOptions(), Caller("bench"))
        async for event in call.events():
            sent += len(encoder.encode(event))
            tokens += isinstance(event, Token)

    async def worker(first: int) -> None:
        for index in range(first, streams, concurrency):
            await one(index)

    try:
        await one(-1)  # warm up: imports, pools, first-call caches
        tokens = sent = 0
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        floor = await _floor(service, streams, concurrency)
    finally:
        await service.stop()
    return tokens, sent, cpu, wall, floor


def measure(base_url: str, streams: int, concurrency: int, profile: int = 0) -> dict[str, Any]:
    profiler = cProfile.Profile() if profile else None
    tokens, sent, cpu, wall, floor = asyncio.run(_streams(base_url, streams, concurrency, profiler))
    sent_by_lm = asyncio.run(get_json(f"{base_url.removesuffix('/v1')}/bench/stats")).json()["streams"]
    # The first stream warmed up; the last `streams` measured DSPy alone.
    chunks = sum(len(chunks) for chunks in sent_by_lm[1 : 1 + streams])
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile)
        sys.stderr.write(out.getvalue())
    return {
        "streams": streams,
        "concurrency": concurrency,
        "lm_chunks": chunks,
        "tokens": tokens,
        "sse_bytes": sent,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_us_per_chunk": round(cpu / chunks * 1e6, 1),
        "dspy_lm_alone_us_per_chunk": round(floor / chunks * 1e6, 1),
        "dspy_serve_us_per_chunk": round((cpu - floor) / chunks * 1e6, 1),
        "profiled": bool(profile),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--answer-chars", type=int, default=4000)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "bench")  # the fake LM takes any key
    with tempfile.TemporaryDirectory() as logs:
        fake = start_fake_lm(Path(logs) / "fake-lm.log", latency=0.0, answer_chars=args.answer_chars)
        try:
            result = measure(fake.api_base, args.streams, args.concurrency, args.profile)
        finally:
            fake.stop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
