"""Run an app under uvicorn with dspy-serve's shutdown order.

On SIGTERM/SIGINT: readiness turns 503 and new calls are refused at once (so a load balancer
stops routing here), uvicorn stops accepting connections, in-flight requests and streams get
``shutdown_grace`` seconds to finish, what is left is cancelled (closing its LM calls), and
finally the lifespan closes the LM clients.
"""

from __future__ import annotations

import errno
import functools
import math
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from dspy_serve.deploy.http_guard import ConnectionLimits, GuardedHttpToolsProtocol
from dspy_serve.serving.service import Service
from dspy_serve.settings import ServeSettings

__all__ = ["PortUnavailable", "ServeServer", "bind_socket", "socket_url", "uvicorn_config", "uvicorn_options"]


class PortUnavailable(ValueError):
    """The address to listen on cannot be bound (in use, not ours, not an address here)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything starts, so a taken port is one clear message
    (not a log line after the programs loaded) and ``--port 0`` has its real port to announce."""
    sock = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(
                f"port {port} on {host} is already in use; stop what listens there, or choose "
                "another --port (--port 0 picks a free one)"
            ) from None
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # worker processes serve on it too
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServeServer(uvicorn.Server):
    """uvicorn's server, which turns unready on a signal before draining, and says when it
    really serves (after the lifespan started, on the bound port)."""

    def __init__(
        self, config: uvicorn.Config, service: Service, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.service = service
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """uvicorn's options from the settings: the one source for one process and for ``--workers``."""
    return {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "log_config": None,  # the CLI configured logging; dspy-serve writes its own access line
        "access_log": False,
        # Round up: a grace of 0.5 s must not become 0 s.
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace),
        "timeout_keep_alive": settings.keep_alive_timeout,
        # X-Forwarded-For decides the client address (and so its rate limit) only from the
        # configured proxies; uvicorn's default trusts loopback, where any local caller sits.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": list(settings.forwarded_allow_ips),
        # Bounds that hold before any request reaches the app (docs/behavior.md, "Connections").
        "http": functools.partial(
            GuardedHttpToolsProtocol,
            limits=ConnectionLimits(
                settings.max_header_bytes, settings.header_timeout, settings.body_timeout
            ),
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # should h11 ever be chosen
        "limit_concurrency": settings.max_connections,
    }


def uvicorn_config(app: FastAPI, settings: ServeSettings) -> uvicorn.Config:
    return uvicorn.Config(app, **uvicorn_options(settings))
