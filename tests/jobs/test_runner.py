"""The job runner through the real ``dspy-serve run`` command: a job survives a killed server
and finishes in the next one, and two workers share one job, each item answered once (the fake
LM's requests counted per item), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.support.cli import require_answering, serve_qa
from tests.support.dspy_prompts import Body, prompt_text
from tests.support.fake_lm import FakeLM
from tests.support.stores import read_store


def echo(body: Body) -> dict[str, str]:
    numbers = re.findall(r"\bq(\d+)\b", prompt_text(body))
    return {"answer": f"a{numbers[-1]}" if numbers else "?"}


def asked(fake: FakeLM) -> Counter[int]:
    """How many LM requests each item's question got."""
    return Counter(int(re.findall(r"\bq(\d+)\b", prompt_text(body))[-1]) for body in list(fake.requests))


@contextmanager
def server(fake: FakeLM, *flags: str, workers: int = 1) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process, url = serve_qa(fake, "--jobs", *flags, *(["--workers", str(workers)] if workers > 1 else []))
    try:
        require_answering(process, url, workers, seconds=120)
        yield process, url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)


def wait_for_state(url: str, job_id: str, predicate: object, seconds: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status: dict[str, object] = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if predicate(status):  # type: ignore[operator]
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: {status}")


def results(url: str, job_id: str) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/jobs/{job_id}/results", timeout=30)
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_job_survives_a_killed_server_and_no_finished_item_runs_again(
    fake_lm: FakeLM, store_url: str
) -> None:
    fake_lm.answers, fake_lm.latency = echo, 0.5
    flags = ("--store", store_url, "--job-concurrency", "2", "--job-lease", "2")
    items = [{"question": f"q{i}"} for i in range(8)]
    with server(fake_lm, *flags) as (process, url):
        job_id = httpx.post(f"{url}/qa/jobs", json={"items": items}, timeout=30).json()["id"]
        wait_for_state(url, job_id, lambda s: s["done"] >= 2)
        os.killpg(process.pid, signal.SIGKILL)  # no shutdown: its claims are left to expire
    finished = {
        row["position"]
        for row in read_store(store_url, "SELECT position FROM job_items WHERE state = 'done'")
    }
    assert 2 <= len(finished) < 8
    with server(fake_lm, *flags) as (_, url):
        status = wait_for_state(url, job_id, lambda s: s["state"] == "done")
        lines = results(url, job_id)
    assert (status["done"], status["failed"]) == (8, 0)
    assert [(line["index"], line["outputs"]) for line in lines] == [
        (i, {"answer": f"a{i}"}) for i in range(8)
    ]
    counts = asked(fake_lm)
    assert all(counts[position] == 1 for position in finished)  # answered before the kill: not again
    # Only the items running at the kill (at most job_concurrency) were asked twice.
    assert sum(counts.values()) <= 8 + 2 and set(counts) == set(range(8))


def test_two_workers_share_one_job_and_each_item_runs_once(fake_lm: FakeLM, store_url: str) -> None:
    fake_lm.answers, fake_lm.latency = echo, 0.2
    items = [{"question": f"q{i}"} for i in range(24)]
    with server(fake_lm, "--store", store_url, "--job-concurrency", "2", workers=2) as (_, url):
        job_id = httpx.post(f"{url}/qa/jobs", json={"items": items}, timeout=30).json()["id"]
        status = wait_for_state(url, job_id, lambda s: s["state"] == "done")
        lines = results(url, job_id)
    assert status["done"] == 24 and [line["index"] for line in lines] == list(range(24))
    assert asked(fake_lm) == Counter(range(24))  # every item asked once, none twice
    workers = read_store(store_url, "SELECT DISTINCT claimed_by FROM job_items")
    assert len(workers) == 2  # both workers took items of the one job


def test_a_server_that_stops_cleanly_hands_its_running_items_back_at_once(
    fake_lm: FakeLM, store_url: str
) -> None:
    """A long lease: the next server finishes the job well before it would expire."""
    fake_lm.answers, fake_lm.latency = echo, 2.0
    flags = ("--store", store_url, "--job-concurrency", "2", "--job-lease", "600")
    with server(fake_lm, *flags) as (process, url):
        items = [{"question": f"q{i}"} for i in range(4)]
        job_id = httpx.post(f"{url}/qa/jobs", json={"items": items}, timeout=30).json()["id"]
        assert fake_lm.wait_for(lambda: fake_lm.in_flight == 2, timeout=60)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    running = read_store(store_url, "SELECT position FROM job_items WHERE state = 'running'")
    assert running == []  # handed back, not left to their lease
    started = time.monotonic()
    with server(fake_lm, *flags) as (_, url):
        status = wait_for_state(url, job_id, lambda s: s["state"] == "done", seconds=120)
    assert status["done"] == 4 and time.monotonic() - started < 300
