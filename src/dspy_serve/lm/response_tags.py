"""Tell apart the token chunks of LM responses streaming at the same time.

DSPy's chunks name their predictor but not their response: concurrent responses of one
predictor (``dspy.Parallel`` branches) would interleave beyond repair, and the native engine
gives no response id. Each LM call wraps the stream's send side so its chunks carry a tag of
their own, and the adapter that asked for the response (which decides how its fields are laid
out); the streaming pipeline (:mod:`dspy_serve.serving.streaming`) routes by them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import dspy
from anyio.streams.memory import MemoryObjectSendStream

__all__ = ["TaggedChunk", "one_response"]


@dataclass(frozen=True)
class TaggedChunk:
    """A token chunk of one LM response, with its tag (see :func:`one_response`)."""

    response: object
    chunk: Any
    adapter: Any = None  # the adapter in effect for this LM call (None: DSPy's default)


class _ResponseStream:
    """The send side of a stream as one LM response sees it: its chunks carry its tag."""

    def __init__(self, send: MemoryObjectSendStream[Any], adapter: Any) -> None:
        self._send, self._response, self._adapter = send, object(), adapter

    async def send(self, item: Any) -> None:
        tagged = TaggedChunk(self._response, item, self._adapter)
        try:
            # The streaming pipeline's buffer is unbounded: no turn of the event loop per chunk
            # (anyio's send checkpoints first); the LM's next read yields anyway.
            self._send.send_nowait(tagged)
        except anyio.WouldBlock:
            await self._send.send(tagged)


@contextmanager
def one_response() -> Iterator[None]:
    """Around one LM call: its chunks are told apart from those of other responses of the same
    predictor streaming at the same time (``dspy.Parallel`` branches), which DSPy's chunks
    cannot do (same predictor id, and the native engine gives no response id)."""
    send = dspy.settings.send_stream
    if not isinstance(send, MemoryObjectSendStream):
        yield
        return
    with dspy.context(send_stream=_ResponseStream(send, dspy.settings.adapter)):
        yield
