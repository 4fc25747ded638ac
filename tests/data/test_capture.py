"""Capture over real HTTP: what a captured call keeps, sampling, privacy, retention, and a store
that is slow or down never failing a request."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from dspy_serve import create_app
from dspy_serve.data.capture import is_sampled
from tests.support.cli import free_port
from tests.support.fake_lm import FakeLM
from tests.support.metrics import samples
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings
from tests.support.stores import read_store, wait_for_rows

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
TWO_STEP = f"two={PROGRAMS / 'serving.py'}:TwoStepAsync"
CALLS = "SELECT * FROM calls ORDER BY created_at"


def ask(url: str, question: str, program: str = "qa", **headers: str) -> httpx.Response:
    response = httpx.post(
        f"{url}/{program}/invoke", json={"inputs": {"question": question}}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def dropped(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "dspy_serve_capture_rows_total" and ("result", "dropped") in labels
    )


def test_a_captured_call_keeps_what_it_did(fake_lm: FakeLM, provider_key: str, store_url: str) -> None:
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], store=store_url))
    with serving(app) as server:
        response = ask(server.base_url, "Capital of France?")
        [row] = wait_for_rows(store_url, CALLS, 1)
    body = response.json()
    assert row["call_id"] == body["call_id"] == response.headers["x-call-id"]
    assert (row["program"], row["wire"], row["model"]) == ("qa", "invoke", "openai/fake-model")
    assert _json(row["inputs"]) == {"question": "Capital of France?"}
    assert _json(row["outputs"]) == {"answer": "Paris"}
    assert _json(row["usage"])["total_tokens"] > 0 and row["error_code"] is None
    assert row["trace"] is None  # only with --capture-trace


def test_capture_trace_keeps_each_predictors_inputs_and_outputs(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(
        fake_settings(fake_lm, programs=[TWO_STEP], capture=["two"], capture_trace=True, store=url)
    )
    with serving(app) as server:
        response = ask(server.base_url, "Capital of Peru?", program="two")
        [row] = wait_for_rows(url, CALLS, 1)
    assert "trace" not in response.json()  # kept, never shown to a caller who did not ask
    steps = _json(row["trace"])
    assert [step["predictor"] for step in steps] == ["rewrite", "answer"]
    assert steps[0]["inputs"] == {"question": "Capital of Peru?"}


def test_sampling_is_decided_by_a_hash_of_the_call_id(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["qa"], capture_rate=0.5, store=url))
    with serving(app) as server:
        ids = [ask(server.base_url, f"question {i}").json()["call_id"] for i in range(24)]
        wanted = {call_id for call_id in ids if is_sampled(call_id, 0.5)}
        rows = wait_for_rows(url, CALLS, len(wanted))
        time.sleep(0.3)  # nothing more arrives
        rows = read_store(url, CALLS)
    assert 0 < len(wanted) < len(ids)
    assert {row["call_id"] for row in rows} == wanted


def test_only_the_named_programs_are_captured(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(fake_settings(fake_lm, programs=[QA, TWO_STEP], capture=["two"], store=url))
    with serving(app) as server:
        ask(server.base_url, "not captured")
        ask(server.base_url, "captured", program="two")
        wait_for_rows(url, CALLS, 1)
        time.sleep(0.3)
        rows = read_store(url, CALLS)
        assert (
            httpx.post(f"{server.base_url}/qa/feedback", json={"call_id": "x", "score": 1}).status_code == 404
        )
    assert [row["program"] for row in rows] == ["two"]


def test_excluded_fields_and_the_redaction_hook_apply_before_storage(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = fake_settings(
        fake_lm,
        programs=[QA],
        capture=["*"],
        store=url,
        capture_exclude=["qa.answer"],
        capture_redact=f"{PROGRAMS / 'redaction.py'}:redact",
    )
    with serving(create_app(settings)) as server:
        ask(server.base_url, "Mail ada@example.com the capital of France?")
        ask(server.base_url, "My password is hunter2, what is it?")
        ask(server.base_url, "Capital of Spain?")
        wait_for_rows(url, CALLS, 2)
        time.sleep(0.3)
        rows = read_store(url, CALLS)
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    questions = sorted(_json(row["inputs"])["question"] for row in rows)
    assert questions == ["Capital of Spain?", "Mail <email> the capital of France?"]
    assert all(_json(row["outputs"]) == {} for row in rows)
    redacted = samples(text)[("dspy_serve_capture_rows_total", (("reason", "hook"), ("result", "redacted")))]
    assert redacted == 1


def test_retention_deletes_the_oldest_calls_by_itself(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = fake_settings(
        fake_lm, programs=[QA], capture=["*"], store=url, capture_max_rows=3, capture_prune_interval=0.1
    )
    with serving(create_app(settings)) as server:
        ids = [ask(server.base_url, f"question {i}").json()["call_id"] for i in range(6)]
        deadline = time.monotonic() + 30
        while True:
            kept = [row["call_id"] for row in read_store(url, CALLS)]
            if len(kept) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert kept == ids[-3:]


def test_a_store_that_is_down_fails_no_call_and_its_drops_are_counted(
    fake_lm: FakeLM, provider_key: str
) -> None:
    nothing_there = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    app = create_app(
        fake_settings(fake_lm, programs=[QA], capture=["*"], store=nothing_there, store_timeout=2)
    )
    with serving(app) as server:
        for i in range(5):
            ask(server.base_url, f"question {i}")
        deadline = time.monotonic() + 30
        while dropped(server.base_url) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dropped(server.base_url) == 5


def test_a_slow_store_never_delays_a_call_and_drops_what_it_cannot_take(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], store=url, store_timeout=0.5))
    with serving(app) as server:
        ask(server.base_url, "before")
        wait_for_rows(url, CALLS, 1)
        blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # every writer now waits for the lock
        try:
            for i in range(3):
                ask(server.base_url, f"while locked {i}")
            deadline = time.monotonic() + 30
            while dropped(server.base_url) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert dropped(server.base_url) == 3
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        ask(server.base_url, "after")
        rows = wait_for_rows(url, CALLS, 2)
    assert [_json(row["inputs"])["question"] for row in rows] == ["before", "after"]


def _json(value: object) -> object:
    """A JSON column as read back by plain SQL: text on SQLite, already decoded on PostgreSQL."""
    import json

    return json.loads(value) if isinstance(value, str) else value


def test_a_failed_call_is_captured_with_its_error_code(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    from tests.support.fake_lm import ServerError

    url = f"sqlite:///{tmp_path / 'store.db'}"
    fake_lm.push(ServerError())
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], store=url))
    with serving(app) as server:
        failed = httpx.post(f"{server.base_url}/qa/invoke", json={"inputs": {"question": "Q?"}}, timeout=30)
        [row] = wait_for_rows(url, CALLS, 1)
    assert failed.status_code == 502
    assert (row["error_code"], row["outputs"]) == ("upstream_error", None)


def test_capturing_a_program_that_is_not_served_is_refused_at_start(fake_lm: FakeLM) -> None:
    import pytest

    with pytest.raises(ValueError, match="--capture nope: no such program"):
        create_app(fake_settings(fake_lm, programs=[QA], capture=["nope"]))


def test_a_streamed_call_is_captured_like_any_other(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[QA], capture=["*"], store=url))
    with serving(app) as server:
        body = {"inputs": {"question": "Capital of France?"}}
        with httpx.stream("POST", f"{server.base_url}/qa/stream", json=body, timeout=30) as response:
            call_id = response.headers["x-call-id"]
            text = "".join(response.iter_text())
        [row] = wait_for_rows(url, CALLS, 1)
    assert "event: prediction" in text
    assert (row["call_id"], row["wire"], _json(row["outputs"])) == (call_id, "stream", {"answer": "Paris"})


async def test_calls_that_finish_together_are_written_in_one_batch(tmp_path: Path) -> None:
    """Rows gather for a moment before they are written: a transaction per batch, not per call."""
    from sqlalchemy import event

    from dspy_serve.data.capture import Capture
    from dspy_serve.serving.metrics import Metrics
    from dspy_serve.settings import ServeSettings
    from tests.support.stores import finished_call

    capture = Capture(ServeSettings(capture=["*"], data_dir=str(tmp_path)), Metrics())
    await capture.start()
    inserts: list[int] = []

    def count(_c: object, _cursor: object, statement: str, parameters: Any, _x: object, many: bool) -> None:
        if statement.startswith("INSERT INTO calls"):
            inserts.append(len(parameters) if many else 1)

    event.listen((await capture.store()).engine.sync_engine, "before_cursor_execute", count)
    for i in range(20):
        capture.observe(finished_call(f"c{i}"))
        await asyncio.sleep(0)  # the writer gets a turn after every call
    await capture.stop()  # writes what is queued
    assert inserts == [20]
    database = sqlite3.connect(tmp_path / "store.db")
    try:
        assert database.execute("SELECT count(*) FROM calls").fetchone() == (20,)
    finally:
        database.close()


async def test_a_queue_smaller_than_a_batch_is_written_before_it_fills(tmp_path: Path) -> None:
    """Rows gather only while the queue has room: a small --capture-queue drops nothing at a
    rate the store keeps up with."""
    from dspy_serve.data.capture import Capture
    from dspy_serve.serving.metrics import Metrics
    from dspy_serve.settings import ServeSettings
    from tests.support.stores import finished_call

    settings = ServeSettings(capture=["*"], data_dir=str(tmp_path), capture_queue=2)
    metrics = Metrics()
    capture = Capture(settings, metrics)
    await capture.start()
    for i in range(8):
        capture.observe(finished_call(f"c{i}"))
        await asyncio.sleep(0.1)
    await capture.stop()
    labels = {"result": "dropped", "reason": "queue_full"}
    assert not metrics.registry.get_sample_value("dspy_serve_capture_rows_total", labels)
    database = sqlite3.connect(tmp_path / "store.db")
    try:
        assert database.execute("SELECT count(*) FROM calls").fetchone() == (8,)
    finally:
        database.close()
