"""Versions of the qa test program, and continuous load that records which version answered.

Each artifact gives qa other instructions, with a marker the fake LM can match
(``fake_lm.when(marker, Answer(...))``), so a test can tell the versions apart by their answers
as well as by ``X-Program-Version``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.programs.serving import qa
from tests.support.settings import PROGRAMS

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def write_artifact(path: Path, marker: str) -> Path:
    """qa's state with instructions that carry ``marker``, saved as ``path`` (JSON)."""
    program = qa.deepcopy()
    program.signature = program.signature.with_instructions(f"Answer the question in a few words. [{marker}]")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


@dataclass
class Seen:
    status: int
    header: str | None  # X-Program-Version
    body: str | None  # "version" in the body
    sticky: str  # the caller's sticky key (its API key name, a header value)
    answer: str | None = None


@dataclass
class Load:
    """What a continuous load saw: every response, in order of arrival."""

    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Seen]:
        return [s for s in self.seen if s.status != 200]

    def unnamed(self) -> list[Seen]:
        """Responses that do not name the version that served them (or name it twice, differently)."""
        return [s for s in self.seen if not s.header or s.header != s.body]

    def versions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in self.seen:
            counts[seen.header or "?"] = counts.get(seen.header or "?", 0) + 1
        return counts


@contextmanager
def continuous_load(
    url: str,
    *,
    clients: int = 4,
    headers: Callable[[int, int], dict[str, str]] = lambda client, n: {},
    sticky: Callable[[int, int], str] = lambda client, n: str(client),
    path: str = "/qa/invoke",
) -> Iterator[Load]:
    """``clients`` threads calling ``path`` back to back until the block ends; the calls of
    client ``c`` (the ``n``-th) send ``headers(c, n)``."""
    load, stop = Load(), threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            n = 0
            while not stop.is_set():
                try:
                    response = http.post(
                        path, json={"inputs": {"question": f"q{index}-{n}"}}, headers=headers(index, n)
                    )
                except httpx.HTTPError as exc:
                    load.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                body = response.json() if response.status_code == 200 else {}
                load.seen.append(
                    Seen(
                        response.status_code,
                        response.headers.get("x-program-version"),
                        body.get("version"),
                        sticky(index, n),
                        (body.get("outputs") or {}).get("answer"),
                    )
                )
                n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # the load is running before the change under test
        yield load
        time.sleep(0.3)  # and still runs after it
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
