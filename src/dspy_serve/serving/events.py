"""What a streamed call yields, independent of any wire format.

A :class:`~dspy_serve.serving.call.Call` hands these to its ``emit`` as it runs; each front end
encodes them (SSE for ``/NAME/stream``, chat-completion chunks for ``/v1``, ...). A stream
always ends with exactly one :class:`Finished` or :class:`Failed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dspy_serve.errors import ServeError
    from dspy_serve.serving.runner import CallResult

__all__ = ["Failed", "Finished", "Status", "StreamEvent", "Token"]


@dataclass(frozen=True)
class Token:
    """A piece of a ``str`` output field of one predictor, as the LM writes it."""

    predictor: str
    field: str
    chunk: str


@dataclass(frozen=True)
class Status:
    """Progress: which step of the program runs."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The call's checked, priced and charged result."""

    result: CallResult
    call_id: str = ""  # the server-minted id of the call (FinishedCall.call_id)


@dataclass(frozen=True)
class Failed:
    """The call failed after the stream started; the error is typed and already counted."""

    error: ServeError
    call_id: str = ""


StreamEvent = Token | Status | Finished | Failed
