"""Connection-level limits, before any request reaches the app or its API-key check: the real
``dspy-serve run`` (uvicorn with httptools, as installed by uvicorn[standard]) over raw sockets."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.cli import answering_pids, serve_qa
from tests.support.fake_lm import FakeLM

# Set through the environment, so that a server without these settings still starts (and holds).
LIMITS = {
    "DSPY_SERVE_HEADER_TIMEOUT": "1",
    "DSPY_SERVE_BODY_TIMEOUT": "1",
    "DSPY_SERVE_KEEP_ALIVE_TIMEOUT": "1",
    "DSPY_SERVE_API_KEYS": "ops:a-key",  # all of this happens before authentication
}


def running(fake: FakeLM, *flags: str, workers: int = 1, **env: str) -> Iterator[str]:
    process, url = serve_qa(fake, *flags, **env)
    try:
        if len(answering_pids(url, workers, seconds=60)) < workers:
            process.kill()
            raise RuntimeError(f"the server did not start: {process.communicate(timeout=10)[0]}")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def server(_fake_lm_server: FakeLM) -> Iterator[str]:
    yield from running(_fake_lm_server, **LIMITS)


def connect(url: str) -> socket.socket:
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)
    return sock


def answer_then_close(sock: socket.socket, within: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (raises if it holds it)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65_536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_an_oversized_request_head_is_refused_without_being_buffered(server: str) -> None:
    sent, chunk = 0, b"a" * 16_384
    with connect(server) as sock:
        try:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < 64_000_000:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the server took 64 MB of headers")
        try:
            reply = answer_then_close(sock)
        except OSError:
            reply = b""
    assert sent < 16_000_000, "cut off after about max_header_bytes, plus socket buffers"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
    # A large but allowed head still works.
    assert httpx.get(server + "/health/live", headers={"X-Big": "a" * 20_000}).status_code == 200


def response_to(url: str, request: bytes) -> bytes:
    """The server's answer to ``request``, sent in one write (the server closes after it)."""
    with connect(url) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        try:
            return answer_then_close(sock)
        except OSError:
            return b""


def head_of(size: int) -> bytes:
    """A request head of ``size`` bytes, complete, asking for a close after the answer."""
    start = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    filler = size - len(start) - len(b"X-Big: \r\n\r\n")
    return start + b"X-Big: " + b"a" * filler + b"\r\n\r\n"


@pytest.mark.parametrize("kib", [33, 60, 120, 500])
def test_an_oversized_head_sent_in_one_write_is_refused(server: str, kib: int) -> None:
    """However the head arrives (one read or many), past max_header_bytes (32 KiB) it is a 431."""
    assert response_to(server, head_of(kib * 1024)).startswith(b"HTTP/1.1 431 ")
    assert response_to(server, head_of(31 * 1024)).startswith(b"HTTP/1.1 200 ")


def chunked_invoke(trailers: bytes, head_fields: bytes = b"") -> bytes:
    """A keyless invoke whose body is chunked, followed by ``trailers``."""
    body = b'{"inputs": {"question": "Capital?"}}'
    return (
        b"POST /qa/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
        + head_fields
        + b"\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n"
        + trailers
        + b"\r\n"
    )


@pytest.mark.parametrize(
    "trailer", [b"X-API-Key: a-key\r\n", b"Authorization: Bearer a-key\r\n"], ids=["x-api-key", "bearer"]
)
def test_a_key_sent_as_a_trailer_does_not_authenticate(server: str, trailer: bytes) -> None:
    """Trailer fields arrive after the body: they are never merged into the request's headers."""
    assert response_to(server, chunked_invoke(trailer)).startswith(b"HTTP/1.1 401 ")
    # The same key in the head is accepted (so the 401 above is the trailer's doing).
    in_head = response_to(server, chunked_invoke(b"", head_fields=trailer))
    assert not in_head.startswith(b"HTTP/1.1 401 "), in_head[:200]


def test_a_chunked_body_sent_piece_by_piece_with_small_trailers_is_served(server: str) -> None:
    """The bounds do not get in the way of a legitimate chunked request: chunks in separate
    writes, then a trailer, which is dropped; and a pipelined second request is answered."""
    body = b'{"inputs": {"question": "Capital?"}}'
    with connect(server) as sock:
        sock.sendall(
            b"POST /qa/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: a-key\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in (body[:10], body[10:]):
            time.sleep(0.1)
            sock.sendall(f"{len(piece):x}\r\n".encode())
            time.sleep(0.1)
            sock.sendall(piece + b"\r\n")
        sock.sendall(
            b"0\r\nX-Checksum: abc\r\n\r\nGET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = answer_then_close(sock)
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"answer"' in reply, reply[:300]
    assert reply.count(b"HTTP/1.1 200 ") == 2, reply


def test_trailers_count_against_max_header_bytes(server: str) -> None:
    """A 20 KiB head plus 20 KiB of trailers, in one write, is over the 32 KiB bound."""
    head = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    trailers = b"".join(b"X-T%d: %s\r\n" % (n, b"b" * 1000) for n in range(20))
    reply = response_to(server, chunked_invoke(trailers, head_fields=head))
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert response_to(server, chunked_invoke(b"", head_fields=head)).startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize(
    "line", [b"X-Trailer: " + b"a" * 1000 + b"\r\n", b"a" * 16_384], ids=["many-lines", "one-endless-line"]
)
def test_endless_trailers_are_cut_off_without_being_buffered(server: str, line: bytes) -> None:
    sent = 0
    with connect(server) as sock:
        try:
            sock.sendall(
                b"POST /health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n" + (b"" if line.endswith(b"\r\n") else b"X-Trailer: ")
            )
            while sent < 64_000_000:
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            pytest.fail("the server took 64 MB of trailers")
    assert sent < 16_000_000, "cut off after about max_header_bytes, plus socket buffers"


def test_trailers_trickled_in_get_408_within_the_body_timeout(server: str) -> None:
    """Trailers are part of the body's time: a byte now and then does not keep the connection."""
    request = chunked_invoke(b"", head_fields=b"X-API-Key: a-key\r\n")
    with connect(server) as sock:
        sock.sendall(request[: -len(b"\r\n")] + b"X-Slow: ")  # the body, then a trailer begun
        started = time.monotonic()
        for _ in range(40):  # 8 s of one byte every 0.2 s, against a body_timeout of 1 s
            if select.select([sock], [], [], 0.2)[0]:
                break  # the server answered: stop writing, so that its answer is not reset away
            sock.sendall(b"a")
        reply = answer_then_close(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert time.monotonic() - started < 8


def test_an_idle_connection_is_closed(server: str) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert answer_then_close(sock) == b""
    assert time.monotonic() - started < 9


def test_a_slow_request_head_gets_408_and_is_closed(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        for byte in b"X-S":  # trickle, then stall: the head is never complete
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
        reply = answer_then_close(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_request_body_gets_408_and_is_closed(server: str) -> None:
    with connect(server) as sock:
        head = b"POST /qa/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"X-API-Key: a-key\r\nContent-Length: 100\r\n\r\n" + b'{"inputs": ')
        reply = answer_then_close(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = answer_then_close(sock)
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_connections_beyond_max_connections_get_503(fake_lm: FakeLM) -> None:
    for url in running(fake_lm, DSPY_SERVE_MAX_CONNECTIONS="3", DSPY_SERVE_HEADER_TIMEOUT="30"):
        held = [connect(url) for _ in range(3)]
        try:
            time.sleep(0.5)
            refused = httpx.get(url + "/health/live", timeout=10)
        finally:
            for sock in held:
                sock.close()
        assert refused.status_code == 503
        time.sleep(0.5)
        assert httpx.get(url + "/health/live", timeout=10).status_code == 200


def test_workers_hold_the_same_limits(fake_lm: FakeLM) -> None:
    flags = ("--workers", "2", "--max-header-bytes", "8192")
    for url in running(fake_lm, *flags, workers=2, **LIMITS):
        for _ in range(4):  # each connection may reach either worker
            with connect(url) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
                assert answer_then_close(sock).startswith(b"HTTP/1.1 408 ")
            assert response_to(url, head_of(9 * 1024)).startswith(b"HTTP/1.1 431 ")
            assert response_to(url, head_of(60 * 1024)).startswith(b"HTTP/1.1 431 ")
            trailer = b"X-API-Key: a-key\r\n"
            assert response_to(url, chunked_invoke(trailer)).startswith(b"HTTP/1.1 401 ")


def test_no_setting_selects_another_http_protocol() -> None:
    """h11 (uvicorn's other protocol) has none of these bounds on a head in one read: every
    server dspy-serve starts, single or --workers, runs the guarded httptools protocol."""
    from dspy_serve.deploy.http_guard import GuardedHttpToolsProtocol
    from dspy_serve.deploy.uvicorn_server import uvicorn_options
    from dspy_serve.settings import ServeSettings

    options = uvicorn_options(ServeSettings(max_header_bytes=4096, workers=2))
    assert options["http"].func is GuardedHttpToolsProtocol
    assert options["http"].keywords["limits"].max_header_bytes == 4096
    assert not {"http", "http_protocol", "h11"} & set(ServeSettings.model_fields)
