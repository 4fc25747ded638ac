"""Streaming latency: from the fake LM sending a chunk to the client reading the matching event.

    python -m bench.stream --url http://127.0.0.1:8000/qa/stream --fake http://127.0.0.1:PORT --count 20

Runs ``count`` streams one after another (so the i-th LM stream belongs to the i-th request),
stamps each SSE event with ``time.time()`` as it is read, then asks the fake LM
(bench.fake_lm_server) when it sent each chunk. Both processes share the machine's clock.
Prints one JSON object of medians, in milliseconds:

- ``first_chunk_to_first_token``: the LM's first content chunk -> the client's first ``token``.
  Includes the wait for the ``[[ ## answer ## ]]`` field header, which spans several chunks.
- ``answer_first_chunk_to_first_token``: the first LM chunk carrying answer text -> first
  ``token``: the pipeline's own delay (reading the field's text, dspy-serve, SSE, HTTP).
- ``answer_last_chunk_to_last_token``: the LM chunk with the answer's last character -> the last
  ``token``. Text is held back only while it could still be a marker or trailing whitespace.

Under load, against the same client reading the LM's stream directly: bench.stream_load.
- ``last_chunk_to_prediction``: the LM's last content chunk -> the final ``prediction`` event.
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

from bench.httpclient import Connection, build_request, get_json, post_json, split_url
from bench.programs import QUESTION

__all__ = ["main", "measure_streams"]

_ANSWER_HEADER = "[[ ## answer ## ]]"


@dataclass
class ClientStream:
    tokens: list[float] = field(default_factory=list)
    prediction: float | None = None
    error: str | None = None


async def _one_stream(connection: Connection, raw: bytes) -> ClientStream:
    seen = ClientStream()
    status, chunks = await connection.stream(raw)
    buffer = b""
    async for chunk in chunks:
        now = time.time()
        buffer += chunk
        *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            name = next((line[7:] for line in event.split(b"\n") if line.startswith(b"event: ")), b"")
            if name == b"token":
                seen.tokens.append(now)
            elif name == b"prediction":
                seen.prediction = now
            elif name == b"error":
                seen.error = event.decode(errors="replace")
    if status != 200:
        seen.error = f"HTTP {status}"
    return seen


def _answer_span(chunks: list[tuple[float, str]]) -> tuple[float, float] | None:
    """When the LM sent the chunks holding the answer's first and last characters (between the
    ``[[ ## answer ## ]]`` header and the next ``[[ ##`` marker), or None if there is no answer."""
    text = "".join(piece for _, piece in chunks)
    header = text.find(_ANSWER_HEADER)
    if header < 0:
        return None
    body_start = header + len(_ANSWER_HEADER)
    body_end = text.find("[[ ##", body_start)
    body = text[body_start : body_end if body_end >= 0 else len(text)]
    if not body.strip():
        return None
    first = body_start + len(body) - len(body.lstrip())
    last = body_start + len(body.rstrip()) - 1
    ends, offset = [], 0
    for sent, piece in chunks:
        offset += len(piece)
        ends.append((offset, sent))
    start_time = next(sent for end, sent in ends if end > first)
    end_time = next(sent for end, sent in ends if end > last)
    return start_time, end_time


def _median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


async def measure_streams(url: str, fake: str, count: int) -> dict[str, Any]:
    host, port, path = split_url(url)
    raw = build_request("POST", host, port, path, json.dumps({"inputs": {"question": QUESTION}}).encode())
    await post_json(f"{fake}/bench/reset", {})
    connection = await Connection.open(host, port)
    client: list[ClientStream] = []
    try:
        for _ in range(count):
            client.append(await asyncio.wait_for(_one_stream(connection, raw), timeout=30))
    finally:
        await connection.close()
    lm_streams: list[list[tuple[float, str]]] = (await get_json(f"{fake}/bench/stats")).json()["streams"]
    first, answer_first, answer_last, prediction = [], [], [], []
    for seen, sent in zip(client, lm_streams, strict=False):
        if seen.error or not seen.tokens or not sent:
            continue
        first.append(seen.tokens[0] - sent[0][0])
        if (span := _answer_span(sent)) is not None:
            answer_first.append(seen.tokens[0] - span[0])
            answer_last.append(seen.tokens[-1] - span[1])
        if seen.prediction is not None:
            prediction.append(seen.prediction - sent[-1][0])
    return {
        "streams": count,
        "measured": len(first),
        "errors": sum(1 for seen in client if seen.error),
        "lm_streams": len(lm_streams),
        "lm_chunks": round(statistics.median(len(s) for s in lm_streams), 1) if lm_streams else 0,
        "tokens_per_stream": round(statistics.median(len(s.tokens) for s in client), 1) if client else 0,
        "lm_stream_ms": _median_ms([s[-1][0] - s[0][0] for s in lm_streams if s]),
        "first_chunk_to_first_token_ms": _median_ms(first),
        "answer_first_chunk_to_first_token_ms": _median_ms(answer_first),
        "answer_last_chunk_to_last_token_ms": _median_ms(answer_last),
        "last_chunk_to_prediction_ms": _median_ms(prediction),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="dspy-serve's http://127.0.0.1:PORT/NAME/stream")
    parser.add_argument("--fake", required=True, help="the bench fake LM's http://127.0.0.1:PORT")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args(argv)
    split_url(args.fake)  # loopback only
    json.dump(asyncio.run(measure_streams(args.url, args.fake, args.count)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
