"""Rows run concurrently and are written in input order, with memory bounded by a window."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from dspy_serve.errors import UpstreamError
from dspy_serve.offline.rows import Row
from dspy_serve.offline.runner import BatchSummary, ItemOutcome, run_rows


def _rows(n: int) -> list[Row]:
    return [Row(i, f"k{i}", {"question": str(i)}) for i in range(n)]


async def test_results_are_written_in_input_order_whatever_order_they_finish_in() -> None:
    written: list[dict[str, Any]] = []
    running = peak = 0
    rng = random.Random(7)

    async def run_item(row: Row) -> ItemOutcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(rng.random() / 100)
        running -= 1
        return ItemOutcome(outputs={"answer": row.key}, usage={"m": {"total_tokens": 3}})

    summary = BatchSummary(total=200)
    await run_rows(_rows(200), run_item, written.append, concurrency=8, summary=summary)
    assert [line["key"] for line in written] == [f"k{i}" for i in range(200)]
    assert [line["outputs"]["answer"] for line in written] == [f"k{i}" for i in range(200)]
    assert peak == 8
    assert (summary.succeeded, summary.failed, summary.tokens) == (200, 0, 600)


async def test_a_slow_first_row_holds_at_most_a_window_of_rows() -> None:
    written: list[dict[str, Any]] = []
    started: list[int] = []
    first_done, ten_started = asyncio.Event(), asyncio.Event()

    async def run_item(row: Row) -> ItemOutcome:
        started.append(row.index)
        if len(started) == 10:
            ten_started.set()
        if row.index == 0:
            await first_done.wait()
        return ItemOutcome(outputs={})

    async def release_later() -> None:
        await ten_started.wait()
        await asyncio.sleep(0.05)  # let the runner start whatever the window allows
        assert len(started) == 10  # 0 plus nine that finished and wait to be written
        first_done.set()

    task = asyncio.create_task(release_later())
    await run_rows(_rows(50), run_item, written.append, concurrency=4, summary=BatchSummary(), window=10)
    await task
    assert len(written) == 50


async def test_a_row_that_raises_gets_its_typed_error_line_and_the_others_go_on() -> None:
    written: list[dict[str, Any]] = []

    async def run_item(row: Row) -> ItemOutcome:
        if row.index == 1:
            raise UpstreamError("The LM provider failed (500).")
        return ItemOutcome(outputs={"answer": "ok"})

    summary = await run_rows(_rows(3), run_item, written.append, concurrency=2, summary=BatchSummary())
    assert written[1]["error"]["code"] == "upstream_error"
    assert "outputs" not in written[1]
    assert [line.get("outputs") for line in (written[0], written[2])] == [{"answer": "ok"}] * 2
    assert (summary.succeeded, summary.failed, summary.errors) == (2, 1, {"upstream_error": 1})
