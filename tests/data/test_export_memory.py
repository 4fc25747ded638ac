"""An export streams: the memory it holds does not grow with the number of rows."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from dspy_serve.data.dataset import DataQuery
from dspy_serve.data.export import export_dataset
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from dspy_serve.store.calls import insert_calls
from tests.support.stores import call_row


async def _peak_export(store: Store, out: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        snapshot = await export_dataset(store, DataQuery("qa"), out)
        return snapshot["rows"], tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_exporting_ten_times_the_rows_takes_about_the_same_memory(
    store_url: str, tmp_path: Path
) -> None:
    store = await Store.open(store_url_of(store_url))
    try:
        padding = "x" * 1000  # ~1 KB a row
        rows = [
            call_row(f"c{i:06d}", created_at=float(i), inputs={"question": padding}) for i in range(20_000)
        ]
        await insert_calls(store, rows[:2_000])
        small = await _peak_export(store, tmp_path / "small.jsonl")
        for start in range(2_000, 20_000, 2_000):
            await insert_calls(store, rows[start : start + 2_000])
        large = await _peak_export(store, tmp_path / "large.jsonl")
    finally:
        await store.close()
    assert (small[0], large[0]) == (2_000, 20_000)
    # 18 MB more rows; a held result set would add them all. Allow the noise of a few batches.
    assert large[1] < small[1] + 4_000_000, (small, large)


def store_url_of(url: str) -> str:
    return store_url(ServeSettings(store=url))
