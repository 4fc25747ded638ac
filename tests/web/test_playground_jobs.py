"""The playground's batch panel over durable jobs (#28), in a real offline chromium under the
page's own Content-Security-Policy, against a real server with --jobs on SQLite: a file larger
than batch_max_items runs as a job, its progress and results come from /jobs/{id}, and Cancel
cancels it; without --jobs the panel runs as before and says large files need --jobs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.browser import offline_page
from tests.support.dspy_prompts import Body, prompt_text
from tests.support.fake_lm import FakeLM, Hang, Slow
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

ECHO = f"echo={PROGRAMS / 'playground_programs.py'}:echo"
CAP = 4  # batch_max_items: a file of more items runs as a job
MAX = 1500  # job_max_items

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="module")
def server(
    _fake_lm_server: FakeLM, provider_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
    settings = fake_settings(
        _fake_lm_server,
        programs=[ECHO],
        store=store,
        jobs=True,
        job_concurrency=2,
        batch_max_items=CAP,
        job_max_items=MAX,
    )
    with serving(create_app(settings)) as running:
        yield running


def answer(body: Body) -> dict[str, str]:
    """Answers 'Question N?' with 'Answer N': each row can be matched to its input."""
    numbers = re.findall(r"Question (\d+)\?", prompt_text(body))
    return {"answer": f"Answer {numbers[-1] if numbers else '?'}", "mood": "calm"}


def new_page(chromium: Any, base_url: str) -> tuple[Any, list[str]]:
    """A page under the real CSP (no bypass); its script errors and CSP violations are collected."""
    page = offline_page(chromium, base_url, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return page, errors


@pytest.fixture
def page(chromium: Any, server: ServerThread, fake_lm: FakeLM) -> Iterator[Any]:
    fake_lm.answers = answer
    page, errors = new_page(chromium, server.base_url)
    yield page
    page.context.close()
    # A refusal the test provokes is logged by the browser; anything else (a CSP violation, a
    # script error) fails the test.
    assert not [e for e in errors if "the server responded with a status of 422" not in e], errors


def open_batch(page: Any, base_url: str, items: list[Any]) -> None:
    page.goto(f"{base_url}/playground/echo")
    expect(page.locator("#workbench")).to_be_visible(timeout=20_000)
    page.locator("#batch summary").click()
    page.locator("#batch-input").fill("\n".join(json.dumps(item) for item in items))


def test_a_file_above_the_batch_cap_runs_as_a_job_with_progress_and_results_in_input_order(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.when("Question 0?", Slow(3.0))  # the first item ends last: its row still comes first
    items: list[Any] = [{"question": f"Question {i}?"} for i in range(6)] + [{"wrong": 1}]
    open_batch(page, server.base_url, items)
    expect(page.locator("#batch-jobs-note")).to_contain_text(f"More than {CAP} items run as a durable job")
    with page.expect_request(lambda request: request.method == "POST") as posted:
        page.locator("#batch-run").click()
    assert posted.value.url == f"{server.base_url}/echo/jobs"
    assert posted.value.post_data_json == {"items": items}
    state = page.locator("#batch-state")
    # Followed while it runs (the first item takes 3 s), with a Cancel button...
    expect(state).to_have_text(re.compile(r"^Job [0-9a-f]{8}…: running\. \d of 7 finished"), timeout=20_000)
    expect(page.locator("#batch-cancel")).to_be_visible()
    # ... to its end: done, with the counts, tokens and cost of GET /jobs/{id}.
    expect(state).to_have_text(
        re.compile(r": done\. 7 of 7 finished, 1 failed · \d+ tokens · cost "), timeout=30_000
    )
    expect(page.locator("#batch-cancel")).to_be_hidden()
    job = httpx.get(f"{server.base_url}/jobs", timeout=10).json()["jobs"][0]  # the newest
    assert state.inner_text().startswith(f"Job {job['id'][:8]}…") and job["tokens"] > 0
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 7, 6, 1)
    assert f"{job['tokens']} tokens" in state.inner_text()
    progress = page.locator("#batch-progress")
    expect(progress).to_have_attribute("value", "7")
    expect(progress).to_have_attribute("max", "7")

    rows = page.locator("#batch-results tbody tr")
    expect(rows).to_have_count(7)
    assert [row.get_attribute("data-item") for row in rows.all()] == [str(i) for i in range(1, 8)]
    assert [rows.nth(i).locator('[data-output="answer"]').inner_text() for i in range(6)] == [
        f"Answer {i}" for i in range(6)
    ]
    assert rows.nth(2).locator('[data-input="question"]').inner_text() == "Question 2?"
    assert "wrong: Extra inputs are not permitted" in rows.nth(6).locator("[data-error]").inner_text()

    with page.expect_download() as download:
        page.locator("#batch-jsonl").click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [(r["item"], r["inputs"]) for r in records] == [(i + 1, item) for i, item in enumerate(items)]
    assert [r["outputs"]["answer"] for r in records[:6]] == [f"Answer {i}" for i in range(6)]
    assert records[6]["error"]["code"] == "invalid_input"


def test_cancel_stops_the_job_and_its_items_end_cancelled(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.when("Question", Hang())  # nothing ends by itself
    items = [{"question": f"Question {i}?"} for i in range(3)]
    open_batch(page, server.base_url, items)
    page.locator("#batch-as-job").check()  # a small file too, when asked
    page.locator("#batch-run").click()
    state = page.locator("#batch-state")
    expect(state).to_have_text(re.compile(r": running\. 0 of 3 finished"), timeout=20_000)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 2, timeout=20)  # job_concurrency
    with page.expect_request(lambda request: request.method == "DELETE") as deleted:
        page.locator("#batch-cancel").click()
    assert re.fullmatch(rf"{server.base_url}/jobs/[0-9a-f]+", deleted.value.url)
    expect(state).to_have_text(
        re.compile(r": cancelled\. 0 of 3 finished, 0 failed, 3 cancelled"), timeout=30_000
    )
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 2, timeout=20)  # the running calls
    errors = page.locator("#batch-results tbody [data-error]")
    expect(errors).to_have_count(3)
    assert all(text.startswith("The job was cancelled") for text in errors.all_inner_texts())
    expect(page.locator("#batch-jsonl")).to_be_enabled()


def test_the_table_shows_the_first_thousand_rows_and_the_download_holds_them_all(
    page: Any, server: ServerThread
) -> None:
    items = [{"wrong": i} for i in range(1001)]  # each fails validation at once: no LM call
    open_batch(page, server.base_url, items)
    page.locator("#batch-run").click()
    expect(page.locator("#batch-state")).to_have_text(
        re.compile(r": failed\. 1001 of 1001 finished, 1001 failed"), timeout=30_000
    )
    expect(page.locator("#batch-results tbody tr")).to_have_count(1000)
    expect(page.locator("#batch-results p.hint")).to_have_text(
        "The table shows the first 1000 rows; the downloads hold them all."
    )
    with page.expect_download() as download:
        page.locator("#batch-jsonl").click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [r["item"] for r in records] == list(range(1, 1002))


def test_a_job_the_server_refuses_shows_its_problem(page: Any, server: ServerThread) -> None:
    open_batch(page, server.base_url, [{"question": f"Question {i}?"} for i in range(MAX + 1)])
    page.locator("#batch-run").click()
    problem = page.locator("#batch-problem")
    expect(problem).to_contain_text("422", timeout=20_000)
    expect(problem.locator("li code")).to_have_text("items")
    expect(page.locator("#batch-state")).to_have_text("The job was not submitted.")
    expect(page.locator("#batch-run")).to_be_enabled()


def test_without_jobs_a_large_file_runs_as_before_and_the_panel_says_it_needs_jobs(
    chromium: Any, fake_lm: FakeLM, provider_env: None
) -> None:
    fake_lm.answers = answer
    app = create_app(fake_settings(fake_lm, programs=[ECHO], batch_max_items=2))
    with serving(app) as plain:
        assert "jobs" not in httpx.get(f"{plain.base_url}/programs/echo", timeout=10).json()["endpoints"]
        page, errors = new_page(chromium, plain.base_url)
        try:
            open_batch(page, plain.base_url, [{"question": f"Question {i}?"} for i in range(3)])
            note = page.locator("#batch-jobs-note")
            expect(note).to_contain_text(
                "Large files (more than 2 items) need the server started with --jobs"
            )
            assert page.locator("#batch-as-job").count() == 0
            with page.expect_request(lambda request: request.method == "POST") as posted:
                page.locator("#batch-run").click()
            assert posted.value.url == f"{plain.base_url}/echo/batch"
            expect(page.locator("#batch-state")).to_have_text(
                "3 of 3 done, 0 failed. Large files run faster and survive this tab as a job: "
                "start the server with --jobs.",
                timeout=30_000,
            )
            expect(page.locator("#batch-results tbody tr")).to_have_count(3)
        finally:
            page.context.close()
    assert not errors, errors
