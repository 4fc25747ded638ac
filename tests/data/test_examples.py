"""load_examples: exported rows (or the store's) as dspy.Examples, the correction as the label."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dspy

from dspy_serve.data import load_examples
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from dspy_serve.store.calls import insert_calls
from dspy_serve.store.feedback import upsert_feedback
from tests.support.stores import call_row


def test_examples_from_a_file_mark_their_inputs_and_prefer_the_correction(tmp_path: Path) -> None:
    rows = [
        {
            "call_id": "a",
            "inputs": {"question": "Q1"},
            "outputs": {"answer": "A1"},
            "correction": None,
            "score": 1.0,
        },
        {
            "call_id": "b",
            "inputs": {"question": "Q2"},
            "outputs": {"answer": "x"},
            "correction": {"answer": "A2"},
            "score": 0.0,
        },
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = load_examples(path)
    assert first.inputs().toDict() == {"question": "Q1"} and first.labels().answer == "A1"
    assert second.answer == "A2" and second.call_id == "b"
    assert [e.call_id for e in load_examples(path, min_score=0.5)] == ["a"]
    assert [e.call_id for e in load_examples(path, corrected_only=True)] == ["b"]


def test_examples_from_the_store_take_the_programs_inputs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        store = await Store.open(store_url(ServeSettings(store=url)))
        await insert_calls(store, [call_row("c1", inputs={"question": "Q", "stray": 1})])
        await upsert_feedback(store, "c1", "", score=None, outputs={"answer": "fixed"}, comment=None)
        await store.close()

    asyncio.run(fill())
    [example] = load_examples(
        "store:qa", program=dspy.Predict("question -> answer"), settings=ServeSettings(store=url)
    )
    assert example.inputs().toDict() == {"question": "Q"} and example.answer == "fixed"


async def test_examples_load_from_code_already_in_an_event_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = await Store.open(store_url(ServeSettings(store=url)))
    await insert_calls(store, [call_row("c1")])
    await store.close()
    [example] = load_examples("store:qa", settings=ServeSettings(store=url))  # as in a notebook
    assert example.call_id == "c1"
