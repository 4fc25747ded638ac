"""A minimal HTTP/1.1 keep-alive client on raw asyncio streams, for loopback benchmarks only.

Requests are pre-built bytes; responses are read as status line, headers, then a body framed by
``Content-Length`` or ``chunked`` transfer encoding. Nothing else of HTTP is supported: this is
a load generator's client, cheap enough (about 0.1 ms of CPU per request) not to be the
bottleneck, unlike a general-purpose client such as httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Connection", "Response", "build_request", "free_port", "get_json", "post_json", "split_url"]

LOOPBACK = "127.0.0.1"
_MAX_HEADER = 64 * 1024


class ProtocolError(ConnectionError):
    """The server said something this client does not understand, or closed mid-response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an ``http://127.0.0.1:PORT/path`` URL; anything off loopback is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in (LOOPBACK, "localhost"):
        raise ValueError(f"benchmarks only talk to http://{LOOPBACK}, not {url!r}")
    return LOOPBACK, parts.port or 80, parts.path or "/"


def build_request(method: str, host: str, port: int, path: str, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def free_port() -> int:
    """A free TCP port on loopback (bound and released: a tiny race, fine for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Connection:
    """One keep-alive connection: send a request, then read its response whole or as it streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        if host != LOOPBACK:
            raise ValueError("benchmarks only talk to loopback")
        reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEADER)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> Response:
        """Send ``raw`` and read the whole response."""
        status, headers = await self._send(raw)
        body = b"".join([chunk async for chunk in self._body(headers)])
        return Response(status, headers, body)

    async def stream(self, raw: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """Send ``raw``; the status and the body's chunks as they arrive (drain them before reuse)."""
        status, headers = await self._send(raw)
        return status, self._body(headers)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _send(self, raw: bytes) -> tuple[int, dict[str, str]]:
        self._writer.write(raw)
        await self._writer.drain()
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed before a response") from exc
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise ProtocolError(f"bad status line {status_line!r}") from exc
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        try:
            if "content-length" in headers:
                yield await self._reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while size := int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    yield await self._reader.readexactly(size)
                    await self._reader.readexactly(2)
                await self._reader.readuntil(b"\r\n")  # no trailers are sent by the servers measured
            else:
                yield await self._reader.read()  # body until close
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed mid-body") from exc


# Every one-off exchange (stats, resets, readiness polls) is bounded: a stuck server fails the run.
_EXCHANGE_TIMEOUT = 5.0


async def _once(method: str, url: str, body: bytes | None) -> Response:
    host, port, path = split_url(url)
    async with asyncio.timeout(_EXCHANGE_TIMEOUT):
        connection = await Connection.open(host, port)
        try:
            return await connection.request(build_request(method, host, port, path, body))
        finally:
            await connection.close()


async def get_json(url: str) -> Response:
    return await _once("GET", url, None)


async def post_json(url: str, payload: Any) -> Response:
    return await _once("POST", url, json.dumps(payload).encode())
