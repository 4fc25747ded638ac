"""The API-key check at the door of every HTTP request.

A key travels as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; which keys exist and
what each may do is :mod:`dspy_serve.serving.keys`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from dspy_serve.errors import Unauthorized
from dspy_serve.serving.keys import KeyRing
from dspy_serve.web.middleware import send_problem
from dspy_serve.web.request_state import caller_in

__all__ = ["DOCS_PATHS", "OPEN_PATHS", "PAGES_PREFIX", "ApiKeyMiddleware", "presented_key"]

# Exact paths, never prefixes: a program named ``docs_qa`` or ``health`` must not inherit them.
OPEN_PATHS = frozenset({"/health/live", "/health/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics"})
# The docs pages' static assets (Swagger UI, ReDoc: public files, nothing of ours): a browser
# cannot send a key for a <script> tag. Safe as a prefix: no program may be named "docs".
ASSETS_PREFIX = "/docs/assets/"
# The playground's static pages and assets (and "/", its landing page): files with no data in
# them; the page's own script asks for a key and sends it with every API call. A prefix, safely:
# no program may be named "playground".
PAGES_PREFIX = "/playground/"


class ApiKeyMiddleware:
    """Require a valid key, except on health checks, static pages (and, unless protected, docs
    and metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        protect_docs: bool = False,
        open_pages: bool = False,
        open_paths: frozenset[str] = frozenset(),
        open_prefix: str | None = None,
    ) -> None:
        self.app = app
        self.open_prefix = open_prefix  # the admin API's routes, which check admin keys instead
        self.open_paths = open_paths  # routes that check a credential of their own (feedback tokens)
        self.keys = keys
        self.protect_docs = protect_docs
        self.open_pages = open_pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        match = self.keys.match(key) if key else None
        if match is None and not self._is_open(scope["path"]):
            await send_problem(
                scope, send, Unauthorized("Send a valid API key as 'Authorization: Bearer KEY'.")
            )
            return
        # Known on open paths too: the OpenAPI document a key holder sees is filtered by its key.
        caller_in(scope).api_key = match
        await self.app(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        return (
            path in OPEN_PATHS
            or path in self.open_paths
            or (self.open_prefix is not None and path.startswith(self.open_prefix))
            or path.startswith(ASSETS_PREFIX)
            or (not self.protect_docs and path in DOCS_PATHS)
            or (self.open_pages and (path == "/" or path.startswith(PAGES_PREFIX)))
        )


def presented_key(scope: Scope) -> str | None:
    """The key a request presents, as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
        elif name == b"x-api-key" and value:
            return str(value.decode("latin-1").strip())
    return None
