"""``load_examples``: a dataset as ``dspy.Example``s, ready for an optimizer or ``dspy.Evaluate``.

Each example holds the call's inputs (marked with ``.with_inputs``) and its label: the served
outputs, with the user's correction over them. ``call_id`` links it back to the call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import dspy

from dspy_serve.data.dataset import DataQuery, dataset_rows, label_of
from dspy_serve.settings import ServeSettings

__all__ = ["aload_rows", "example_of", "load_examples", "read_rows"]

T = TypeVar("T")


def example_of(row: dict[str, Any], input_names: Iterable[str] | None = None) -> dspy.Example:
    inputs = row.get("inputs") or {}
    names = list(input_names) if input_names is not None else list(inputs)
    fields = {**{name: inputs.get(name) for name in names}, **label_of(row), "call_id": row["call_id"]}
    return dspy.Example(**fields).with_inputs(*names)


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of an exported JSON-lines file, one at a time."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


async def aload_rows(settings: ServeSettings, query: DataQuery) -> list[dict[str, Any]]:
    from dspy_serve.store import Store, store_url

    store = await Store.open(store_url(settings))
    try:
        return [row async for row in dataset_rows(store, query)]
    finally:
        await store.close()


def load_examples(
    source: str | Path,
    *,
    program: dspy.Module | None = None,
    settings: ServeSettings | None = None,
    since: float | None = None,
    min_score: float | None = None,
    corrected_only: bool = False,
) -> list[dspy.Example]:
    """Examples from an exported ``.jsonl`` file, or from the store (``"store:NAME"``, with
    ``settings`` naming it; default: the settings of the environment). ``program`` gives the
    input fields (its signature's); otherwise each call's own inputs are the inputs."""
    input_names = _input_names(program) if program is not None else None
    text = str(source)
    if text.startswith("store:"):
        query = DataQuery(text.removeprefix("store:"), since, min_score, corrected_only)
        rows = _run(aload_rows(settings or ServeSettings(), query))
    else:
        rows = [
            row
            for row in read_rows(Path(text))
            if (min_score is None or (row.get("score") is not None and row["score"] >= min_score))
            and (not corrected_only or row.get("correction") is not None)
            and (since is None or row.get("created_at", 0) >= since)
        ]
    return [example_of(row, input_names) for row in rows]


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end, also from code already in an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def _input_names(program: dspy.Module) -> list[str]:
    """The program's inputs as the server derives them (its signature, or its forward's parameters)."""
    from dspy_serve.serving.schema import derive_interface

    return list(derive_interface("program", program).inputs.model_fields)
