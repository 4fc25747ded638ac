"""Store URLs for tests: a fresh SQLite file, or a fresh database on the session's PostgreSQL."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from dspy_serve.serving.observers import FinishedCall
from tests.support.postgres_server import PostgresServer, create_database

_numbers = itertools.count(1)


def fresh_store_url(backend: str, tmp_path: Path, postgres: PostgresServer | None) -> str:
    """A store URL with nothing in it, as the operator would write it (no driver named)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    assert postgres is not None
    return create_database(postgres, f"test_{next(_numbers)}")


def call_row(call_id: str, **overrides: object) -> dict[str, object]:
    """A captured call as the store keeps it (the qa program's shape)."""
    import time

    row: dict[str, object] = {
        "call_id": call_id,
        "created_at": time.time(),
        "program": "qa",
        "version": None,
        "key_name": None,
        "wire": "invoke",
        "request_id": None,
        "model": "openai/fake-model",
        "inputs": {"question": f"question {call_id}?"},
        "options": {},
        "outputs": {"answer": f"answer {call_id}"},
        "error_code": None,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        "cost_usd": None,
        "latency_s": 0.01,
        "trace": None,
        "sampled": True,
    }
    row.update(overrides)
    return row


def finished_call(call_id: str, **overrides: Any) -> FinishedCall:
    """A finished call of the qa program, as the call pipeline publishes it to capture."""
    import time

    values: dict[str, Any] = {
        "call_id": call_id,
        "program": "qa",
        "version": None,
        "key_name": None,
        "inputs": {"question": f"question {call_id}?"},
        "options": {},
        "outputs": {"answer": f"answer {call_id}"},
        "error_code": None,
        "model": "openai/fake-model",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        "cost_usd": None,
        "latency_s": 0.01,
        "started_at": time.time(),
        "wire": "invoke",
    }
    values.update(overrides)
    return FinishedCall(**values)


def read_store(url: str, query: str) -> list[dict[str, object]]:
    """Rows of a SQL query on the store at ``url`` (as the operator writes it), read outside the server."""
    import asyncio

    from sqlalchemy import text

    from dspy_serve.settings import ServeSettings
    from dspy_serve.store import Store, store_url

    async def read() -> list[dict[str, object]]:
        store = await Store.open(store_url(ServeSettings(store=url)), migrate=False)
        try:
            async with store.engine.connect() as connection:
                return [dict(row) for row in (await connection.execute(text(query))).mappings()]
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for_rows(url: str, query: str, want: int, seconds: float = 30.0) -> list[dict[str, object]]:
    """Poll until ``query`` returns at least ``want`` rows (capture writes in the background)."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            rows = read_store(url, query)
        except Exception:  # the server has not migrated the store yet
            rows = []
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
