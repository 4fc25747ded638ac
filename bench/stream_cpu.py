"""The server's CPU per streamed LM chunk, measured in-process: robust on a loaded machine.

    python -m bench.stream_cpu [--streams 20 --answer-chars 4000 --concurrency 4 --profile 25]

A fake LM (bench.fake_lm_server, a process of its own so its CPU is not counted) streams a long
answer in 4-character chunks, ``--chunk-delay`` apart (none by default). This process serves
``dspy.Predict("question -> answer")`` through :class:`~dspy_serve.serving.service.Service`
(DSPy's real ``dspy.LM`` path, our stream pipeline) and encodes every event as ``/NAME/stream``
does (SSE framing); with ``--asgi``, each stream is a ``POST /qa/stream`` through the whole ASGI
app instead (middleware, route, ``EventStreamResponse``). Only the HTTP server is missing.

Then the same streams are read by DSPy alone (``dspy.Predict`` with a stream to send chunks
to, drained): its LM client's parsing of each chunk is a cost no server avoids.

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


def _asgi_stream(app: Any, body: bytes) -> Any:
    """One ``POST /qa/stream`` through the whole ASGI app (middleware, route, SSE response): the
    bytes it sends. The client stays until the response ends."""

    async def run() -> tuple[int, int]:
        sent, tokens = 0, 0
        done = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal sent, tokens
            if message["type"] == "http.response.body":
                data = message.get("body", b"")
                sent += len(data)
                tokens += data.count(b"event: token\n")
                if not message.get("more_body"):
                    done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/qa/stream",
            "raw_path": b"/qa/stream",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)
        return tokens, sent

    return run()


async def _streams(
    base_url: str, streams: int, concurrency: int, profiler: cProfile.Profile | None, asgi: bool
) -> tuple[int, int, float, float, float]:
    """(tokens, SSE bytes, CPU seconds, wall seconds, DSPy's own CPU seconds) of ``streams``
    streams after a warm-up."""
    from dspy_serve import ServeSettings
    from dspy_serve.serving.caller import Caller
    from dspy_serve.serving.events import Token
    from dspy_serve.serving.service import CallOptions, Service
    from dspy_serve.web.sse import ProgramEventEncoder

    settings = ServeSettings(model="openai/fake-model", api_base=base_url, lm_retries=0, timeout=120)
    if asgi:
        from dspy_serve import create_app

        app = create_app(settings, programs={"qa": dspy.Predict("question -> answer")})
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        service = app.state.service
    else:
        service = Service(settings, {"qa": dspy.Predict("question -> answer")})
        await service.start()
    tokens = 0
    sent = 0

    async def one(index: int) -> None:
        nonlocal tokens, sent
        if asgi:
            body = json.dumps({"inputs": {"question": f"{QUESTION} {index}"}}).encode()
            got_tokens, got_bytes = await _asgi_stream(app, body)
            tokens, sent = tokens + got_tokens, sent + got_bytes
            return
        program = service.programs["qa"]
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
        if asgi:
            await lifespan.__aexit__(None, None, None)
        else:
            await service.stop()
    return tokens, sent, cpu, wall, floor


def measure(
    base_url: str,
    streams: int,
    concurrency: int,
    profile: int = 0,
    *,
    asgi: bool = False,
    chunk_delay: float = 0.0,
) -> dict[str, Any]:
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU time, not wall time
    tokens, sent, cpu, wall, floor = asyncio.run(_streams(base_url, streams, concurrency, profiler, asgi))
    sent_by_lm = asyncio.run(get_json(f"{base_url.removesuffix('/v1')}/bench/stats")).json()["streams"]
    # The first stream warmed up; the last `streams` measured DSPy alone.
    chunks = sum(len(chunks) for chunks in sent_by_lm[1 : 1 + streams])
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile)
        sys.stderr.write(out.getvalue())
    return {
        "through": "the ASGI app" if asgi else "Service.stream + SSE encoding",
        "streams": streams,
        "chunk_delay_ms": chunk_delay * 1000,
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
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds between LM chunks (0: as fast as it can)"
    )
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    parser.add_argument(
        "--asgi", action="store_true", help="through the whole ASGI app (middleware, route, SSE response)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "bench")  # the fake LM takes any key
    with tempfile.TemporaryDirectory() as logs:
        fake = start_fake_lm(
            Path(logs) / "fake-lm.log",
            latency=0.0,
            chunk_delay=args.chunk_delay,
            answer_chars=args.answer_chars,
        )
        try:
            result = measure(
                fake.api_base,
                args.streams,
                args.concurrency,
                args.profile,
                asgi=args.asgi,
                chunk_delay=args.chunk_delay,
            )
        finally:
            fake.stop()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
