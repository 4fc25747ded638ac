"""Connection-level limits that hold before any request reaches the app (and its API-key check).

uvicorn's httptools protocol (what ``uvicorn[standard]`` runs) buffers a request head of any
size, waits forever for the head of a new connection and for a request body, and appends a
chunked body's trailer fields to the request's headers (so an ``X-API-Key`` sent after the body
authenticated it). This protocol is uvicorn's own with these bounds added:

- a request line and headers larger than ``max_header_bytes`` get 431 and the connection closes,
  whether the head arrives in one read or in many; a chunked body's trailers count against the
  same bound (head and trailers together), and are read and dropped, never merged into the
  headers (RFC 9110 §6.5.1: only a field's own definition may allow that, and ASGI has no place
  for request trailers);
- a connection must deliver its whole request head within ``header_timeout`` seconds of opening
  (or of its first byte after a keep-alive pause), else 408 and close: idle and slow-header
  connections are not held;
- while a request body is incomplete, ``body_timeout`` seconds without a byte of it end the
  connection (408 when no response has started), unless the app itself paused reading.

Idle keep-alive connections and the number of connections are bounded by uvicorn's own
``timeout_keep_alive`` and ``limit_concurrency`` (set in ``uvicorn_options``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol"]


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float


def _plain_response(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


_HEADERS_TOO_LARGE = _plain_response(b"431 Request Header Fields Too Large")
_REQUEST_TIMEOUT = _plain_response(b"408 Request Timeout")


class _Refused(Exception):
    """Raised from a parser callback after a bound refused the message: stops the parse."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the request head and body bounded in size and time."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._reading_head = True
        # Two counts, as the parser hands over a field only once it is whole: bytes received while
        # a field section (a head, or trailers) was incomplete, which bounds what the parser
        # buffers; and the parsed size of this message's head and trailers, which catches a head
        # that arrived whole in one read.
        self._in_fields = True
        self._raw_field_bytes = 0
        self._field_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- the head and trailers: bounded in size, the head in time too ------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the size bound around the parse (and no 400 after a refusal)."""
        if self._in_fields:
            self._raw_field_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.transport.is_closing():  # else a bound refused the message mid-parse
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_fields and self._raw_field_bytes > self._limits.max_header_bytes:
            self._refuse_fields()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head, self._field_bytes = True, 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_field_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_field_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        if self._reading_head:
            super().on_header(name, value)
        # else a trailer: counted, then dropped.

    def _count_field_bytes(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > self._limits.max_header_bytes:
            self._refuse_fields()
            raise _Refused  # nothing more of this connection is parsed, nor run

    def on_headers_complete(self) -> None:
        self._reading_head, self._in_fields, self._raw_field_bytes = False, False, 0
        self._cancel_head_timer()
        self._arm_body_timer()
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        """A chunk's data follows, or (after the last chunk) the trailers: count until data comes."""
        self._in_fields, self._raw_field_bytes = True, 0

    def on_chunk_complete(self) -> None:
        """The next chunk-size line (its extensions too) counts like a field until data comes."""
        self._in_fields, self._raw_field_bytes = True, 0

    def _refuse_fields(self) -> None:
        self.logger.warning("Request head or trailers over %d bytes: refused.", self._limits.max_header_bytes)
        if self._reading_head:  # no response of this message yet; an earlier one may be under way
            busy = self.cycle is not None and not self.cycle.response_complete
        else:  # trailers: this message's response may have begun, or even ended
            busy = self.cycle is not None and self.cycle.response_started
        self._refuse(b"" if busy else _HEADERS_TOO_LARGE)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            # Nothing at all on a new connection: just close. A partial head: say why.
            self._refuse(_REQUEST_TIMEOUT if self._raw_field_bytes else b"")

    # --- the body: bytes must keep coming --------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._in_fields, self._raw_field_bytes = False, 0
        super().on_body(body)
        self._cancel_body_timer()
        self._arm_body_timer()

    def on_message_complete(self) -> None:
        self._in_fields, self._raw_field_bytes = True, 0  # what follows is the next head
        self._cancel_body_timer()
        super().on_message_complete()

    def _arm_body_timer(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self._limits.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is not reading: the client is not to blame
            self._arm_body_timer()
            return
        started = self.cycle is not None and self.cycle.response_started
        self._refuse(b"" if started else _REQUEST_TIMEOUT)

    # --- closing ----------------------------------------------------------------------------------
    def _refuse(self, response: bytes) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # The app sees the client gone (and its response, if any, goes nowhere).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if response:
            self.transport.write(response)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)
