"""Rows run concurrently, results written in input order.

At most ``concurrency`` rows run at once. A row that finishes before an earlier one waits in a
reorder buffer, which is bounded too (``window``): when it is full no new row starts until the
earliest one finishes, so memory stays flat however many rows the file has. The earliest row
cannot hold the run for long: every call has the service's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dspy_serve.errors import from_exception
from dspy_serve.offline.rows import Row

__all__ = ["BatchSummary", "ItemOutcome", "run_rows"]


@dataclass(frozen=True)
class ItemOutcome:
    """One row's result: its outputs, or a typed error (problem+json), and what it spent."""

    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # the problem document of the error
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, as /invoke reports it
    cost: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None
    kept: bool = False  # an earlier run's answer, written again without running the row

    @classmethod
    def of_line(cls, line: dict[str, Any]) -> ItemOutcome:
        return cls(
            outputs=line.get("outputs"),
            error=line.get("error"),
            usage=line.get("usage") or {},
            cost=line.get("cost") or {},
            call_id=line.get("call_id"),
            kept=True,
        )

    def line(self, row: Row) -> dict[str, Any]:
        body: dict[str, Any] = {"key": row.key, "index": row.index}
        if self.call_id is not None:
            body["call_id"] = self.call_id
        if self.error is None:
            body["outputs"] = self.outputs
        else:
            body["error"] = self.error
        body["usage"] = self.usage
        body["cost"] = self.cost
        return body


@dataclass
class BatchSummary:
    total: int | None = None  # rows in the input, when known
    skipped: int = 0  # done by an earlier run
    earlier_failed: int = 0  # of those, rows whose line is an error
    succeeded: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by error code
    tokens: int = 0
    cost_usd: float | None = None
    started: float | None = None  # time.monotonic() when this run's first row started

    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    @property
    def done(self) -> int:
        return self.skipped + self.succeeded + self.failed

    @property
    def rows_failed(self) -> int:
        """Rows of the output file whose line is an error, from this run or an earlier one."""
        return self.failed + self.earlier_failed

    def note_earlier(self, line: dict[str, Any]) -> None:
        """A row an earlier run answered, kept as it is."""
        self.skipped += 1
        if line.get("error") is not None:
            self.earlier_failed += 1
            code = str(line["error"].get("code", "error"))
            self.errors[code] = self.errors.get(code, 0) + 1

    def add(self, outcome: ItemOutcome) -> None:
        if outcome.kept:
            self.skipped += 1
            return
        if outcome.error is None:
            self.succeeded += 1
        else:
            self.failed += 1
            code = str(outcome.error.get("code", "error"))
            self.errors[code] = self.errors.get(code, 0) + 1
        for usage in outcome.usage.values():
            self.tokens += int(usage.get("total_tokens") or 0)
        cost = outcome.cost.get("total_usd") if outcome.cost else None
        if isinstance(cost, (int, float)):
            self.cost_usd = (self.cost_usd or 0.0) + float(cost)


RunItem = Callable[[Row], Awaitable[ItemOutcome]]


async def run_rows(
    rows: Iterable[Row],
    run_item: RunItem,
    write: Callable[[dict[str, Any]], None],
    *,
    concurrency: int,
    summary: BatchSummary,
    on_progress: Callable[[BatchSummary], None] = lambda summary: None,
    window: int | None = None,
) -> BatchSummary:
    """Run every row through ``run_item`` and ``write`` each result line in input order."""
    window = window or 4 * concurrency
    gate = asyncio.Semaphore(concurrency)
    finished: dict[int, tuple[Row, ItemOutcome]] = {}
    pending: dict[int, asyncio.Task[None]] = {}
    next_to_write: int | None = None
    room = asyncio.Condition()

    async def one(position: int, row: Row) -> None:
        if row.previous is not None:  # kept from an earlier run: no LM call, no slot
            async with room:
                finished[position] = (row, ItemOutcome.of_line(row.previous))
                room.notify_all()
            return
        async with gate:
            try:
                outcome = await run_item(row)
            except Exception as exc:  # a row owns its error; the others go on
                error = from_exception(exc)
                outcome = ItemOutcome(error=error.problem(), usage=error.usage or {})
        async with room:
            finished[position] = (row, outcome)
            room.notify_all()

    def head_finished() -> bool:
        return next_to_write in finished

    def flush() -> None:
        nonlocal next_to_write
        while next_to_write is not None and next_to_write in finished:
            row, outcome = finished.pop(next_to_write)
            pending.pop(next_to_write, None)
            write(outcome.line(row))
            summary.add(outcome)
            next_to_write += 1
        on_progress(summary)

    try:
        for position, row in enumerate(rows):
            if next_to_write is None:
                next_to_write = position
                summary.started = time.monotonic()
            async with room:
                while len(pending) >= window:  # in flight plus finished but not yet written
                    await room.wait_for(head_finished)
                    flush()
            pending[position] = asyncio.create_task(one(position, row))
            async with room:
                flush()
        while pending:
            async with room:
                await room.wait_for(head_finished)
                flush()
    finally:
        for task in pending.values():
            task.cancel()
        await asyncio.gather(*pending.values(), return_exceptions=True)
    return summary
