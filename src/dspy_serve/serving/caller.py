"""Who is calling, and what their request has cost: one typed object per request.

Every front end makes one (HTTP middleware, the MCP stdio loop). Each call the request makes
adds its :class:`~.observers.FinishedCall` here (tokens, cost, error), the same record the
service's observers get, so the access log agrees with the metrics and the response. Nothing
else about a request is kept on the side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dspy_serve.errors import ServeError
from dspy_serve.serving.keys import ApiKey
from dspy_serve.serving.observers import FinishedCall

__all__ = ["CacheControl", "Caller"]


@dataclass(frozen=True)
class CacheControl:
    """What a request's ``Cache-Control`` header allows the response cache: ``no-cache`` (this
    request runs the program, and joins no identical call in flight) and ``no-store`` (its
    answer is not kept)."""

    read: bool = True
    store: bool = True

    @classmethod
    def parse(cls, header: str) -> CacheControl:
        directives = {part.strip().lower().partition("=")[0] for part in header.split(",")}
        return cls(read="no-cache" not in directives, store="no-store" not in directives)


@dataclass
class Caller:
    """One request's caller: identity, key, request id, and its accounting."""

    address: str  # the client address, or a label for a local transport ("stdio")
    request_id: str | None = None
    api_key: ApiKey | None = None
    tokens: int | None = None  # LM tokens charged to this request, once any were
    cost_usd: float | None = None
    error_codes: list[str] = field(default_factory=list)  # every error this request reported
    cache_control: CacheControl = CacheControl()
    # Whether the answer was reused: "hit" (from the response cache or an identical call in
    # flight, charged nothing) or "miss" (run for this request); None when reuse was not possible.
    cache: str | None = None
    coalesced: bool = False  # the answer (or one of a batch's) came from an identical call in flight
    version: str | None = None  # the program version its (last) call ran on: X-Program-Version, #27
    # Tasks that must live as long as the request (the loop keeps only weak references).
    held: list[object] = field(default_factory=list, repr=False)
    # The request's raw headers (ASGI's lower-case name/value pairs): a split may be sticky by one.
    headers: Sequence[tuple[bytes, bytes]] = field(default=(), repr=False)
    _reported: list[ServeError] = field(default_factory=list, repr=False)

    @property
    def identity(self) -> str:
        """Whose budget a call spends: the API key's name, else the client address."""
        return self.api_key.name if self.api_key is not None else self.address

    def header(self, name: str) -> str | None:
        """The value of the request header ``name`` (lower-case), if it was sent."""
        wanted = name.encode("latin-1")
        return next((value.decode("latin-1") for key, value in self.headers if key == wanted), None)

    def may_call(self, program: str) -> bool:
        return self.api_key is None or self.api_key.may_call(program)

    def may_see_prompts(self) -> bool:
        """Whether this caller's key lets it see prompts (where the server exposes them)."""
        return self.api_key is None or self.api_key.may_see_prompts()

    def report(self, error: ServeError) -> ServeError:
        """Note an error this request met (counted and logged once, when the request ends).

        Called by each wire's one renderer and for each finished call; an error already noted
        (a call's error that its wire then renders) is noted once."""
        if not any(seen is error for seen in self._reported):
            self._reported.append(error)
            self.error_codes.append(error.code)
        return error

    def add_call(self, call: FinishedCall, error: ServeError | None) -> None:
        """Add a finished call of this request to its account (a batch adds one per item)."""
        self.tokens = (self.tokens or 0) + call.usage.get("total_tokens", 0)
        if call.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + call.cost_usd
        if error is not None:
            self.report(error)

    def note_reuse(self, hit: bool, *, coalesced: bool = False) -> None:
        """Note how a call was answered; a batch is a hit only when every item was."""
        self.cache = "hit" if hit and self.cache != "miss" else "miss"
        self.coalesced = self.coalesced or coalesced
