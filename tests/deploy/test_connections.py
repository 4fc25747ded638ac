"""Connection-level limits, before any request reaches the app or its API-key check: the real
``dspy-serve run`` (uvicorn with httptools, as installed by uvicorn[standard]) over raw sockets."""

from __future__ import annotations

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
    for url in running(fake_lm, "--workers", "2", workers=2, **LIMITS):
        for _ in range(2):  # each connection may reach either worker
            with connect(url) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
                assert answer_then_close(sock).startswith(b"HTTP/1.1 408 ")
