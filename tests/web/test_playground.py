"""The playground (`/` and `/playground/NAME`) in a real, offline browser against real servers.

One browser and one server for the module (a second, with API keys, only for the auth test);
the session's fake LM is scripted per test through the `fake_lm` fixture.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import httpx
import pytest

from dspy_serve import create_app
from tests.support.browser import offline_page
from tests.support.dspy_prompts import prompt_text
from tests.support.fake_lm import AuthFailure, FakeLM, Hang, Slow
from tests.support.servers import ServerThread, serving
from tests.support.settings import FAKE_KEY, PROGRAMS, fake_settings

TARGET = PROGRAMS / "playground_programs.py"
KEY = "pg-test-key-1"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`echo` runs optimized state: the landing page shows it with its sha256."""
    from tests.support.programs.playground_programs import Echo

    optimized = dspy.Predict(Echo)
    optimized.demos = [dspy.Example(question="Capital of Peru?", answer="Lima", mood="calm")]
    path = tmp_path_factory.mktemp("artifacts") / "echo.json"
    optimized.save(str(path))
    return path


@pytest.fixture(scope="module")
def server(_fake_lm_server: FakeLM, provider_env: None, artifact: Path) -> Iterator[ServerThread]:
    settings = fake_settings(
        _fake_lm_server,
        programs=[
            f"everything={TARGET}:everything",
            f"echo={TARGET}:echo",
            f"two_steps={PROGRAMS / 'serving.py'}:TwoStepAsync",
        ],
        artifacts=[f"echo={artifact}"],
        allow_models=["openai/other-model"],
        max_tokens_limit=512,
        expose_trace=True,
        expose_prompts=True,
    )
    with serving(create_app(settings)) as running:
        yield running


@pytest.fixture
def page(chromium: Any, server: ServerThread) -> Iterator[Any]:
    # bypass_csp: the tests wait with script of their own, and the XSS test proves text-only
    # rendering is safe without the page's Content-Security-Policy (checked over HTTP below).
    page = offline_page(chromium, server.base_url, accept_downloads=True, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.context.close()
    assert not errors, errors  # no script error on any page


def open_program(page: Any, server: ServerThread, name: str, fragment: str = "") -> None:
    page.goto(f"{server.base_url}/playground/{name}{fragment}")
    page.wait_for_selector("#workbench:not([hidden])", timeout=20_000)


def field(page: Any, path: str) -> Any:
    return page.locator(f'[data-path="{path}"]')


def wait_for_outputs(page: Any) -> None:
    page.wait_for_selector("#outputs .output", timeout=20_000)


# --- the landing page ---------------------------------------------------------------------------


def test_the_landing_page_lists_programs_with_state_links_and_snippets_as_text(
    chromium: Any, server: ServerThread, artifact: Path
) -> None:
    # This page keeps the pages' Content-Security-Policy: they work under it.
    page = offline_page(chromium, server.base_url)
    page.goto(server.base_url + "/")
    card = page.locator('.card[data-program="echo"]')
    card.wait_for(timeout=20_000)
    # The description holds markup: it is shown as text, never parsed.
    assert card.locator(".description").inner_text() == (
        "Answer the question; the answer may contain <b>markup</b>."
    )
    assert card.locator(".description b").count() == 0
    assert "question -> answer, mood" in card.inner_text()
    assert "openai/fake-model" in card.inner_text()
    sha = httpx.get(server.base_url + "/programs/echo").json()["artifact"]["sha256"]
    assert "optimized" in card.inner_text() and f"sha256 {sha[:12]}" in card.inner_text()
    assert card.locator(f'code[title="{sha}"]').count() == 1
    assert "not optimized" in page.locator('.card[data-program="everything"]').inner_text()
    links = {a.inner_text(): a.get_attribute("href") for a in card.locator(".links a").all()}
    assert links == {
        "Open playground": "playground/echo",
        "OpenAPI operation": "docs#/echo/echo_invoke",
        "Description (JSON)": "programs/echo",
    }
    card.locator("summary", has_text="Call it").click()
    assert f"{server.base_url}/echo/invoke" in card.locator('[data-snippet="curl"]').inner_text()
    card.locator("a", has_text="Open playground").click()
    page.wait_for_selector("#workbench:not([hidden])", timeout=20_000)
    assert page.locator("#title").inner_text() == "echo"
    page.locator("textarea").first.fill("Capital of Peru?")
    page.locator("#run").click()
    wait_for_outputs(page)
    page.context.close()


# --- the form -------------------------------------------------------------------------------------


def test_every_input_type_gets_its_widget_and_a_full_form_runs(
    page: Any, server: ServerThread, fake_lm: FakeLM, tmp_path: Path
) -> None:
    open_program(page, server, "everything")
    assert field(page, "inputs.text").locator("textarea").count() == 1
    assert "free text to judge" in field(page, "inputs.text").inner_text()  # descriptions shown
    tone = field(page, "inputs.tone").locator("select")
    assert tone.locator("option").all_inner_texts() == ["formal", "casual", "pirate"]
    strict = field(page, "inputs.strict").locator('input[role="switch"]')
    assert strict.is_checked()  # default prefilled
    count = field(page, "inputs.count").locator('input[type="number"]')
    assert (count.get_attribute("min"), count.get_attribute("max"), count.get_attribute("step")) == (
        "1",
        "5",
        "1",
    )
    weight = field(page, "inputs.weight").locator('input[type="number"]')
    assert weight.input_value() == "0.5" and weight.get_attribute("step") == "any"
    page.locator("#options-box summary").click()
    assert page.locator("#opt-model option").all_inner_texts() == ["openai/fake-model", "openai/other-model"]
    assert page.locator("#opt-max_tokens").get_attribute("max") == "512"
    assert page.locator("#opt-temperature").get_attribute("max") == "2"

    field(page, "inputs.text").locator("textarea").fill("a calm day")
    tone.select_option(label="pirate")
    strict.uncheck()
    count.fill("3")
    weight.fill("0.25")
    tags = field(page, "inputs.tags")
    tags.locator('[data-path="inputs.tags.0"] input').fill("alpha")
    tags.get_by_role("button", name="Add tags").click()
    tags.locator('[data-path="inputs.tags.1"] input').fill("beta")
    field(page, "inputs.address.street").locator("input").fill("1 Rue de Rivoli")
    field(page, "inputs.address.city").locator("input").fill("Paris")
    history = field(page, "inputs.history")
    history.get_by_role("button", name="Add turn").click()
    turn = history.locator("fieldset.turn").first
    turn.get_by_label("text").fill("earlier text")
    turn.get_by_label("summary").fill("earlier summary")
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    field(page, "inputs.photo").get_by_label("or a file").set_input_files(str(image))
    page.wait_for_function("document.querySelector('input[type=url]').value.startsWith('data:image/png')")
    page.locator("#opt-model").select_option("openai/other-model")
    page.locator("#opt-temperature").fill("0.3")
    page.locator("#run").click()
    wait_for_outputs(page)

    prompt = json.dumps(fake_lm.last_request)
    for sent in (
        "a calm day",
        "pirate",
        "alpha",
        "beta",
        "Rue de Rivoli",
        "earlier summary",
        "data:image/png",
    ):
        assert sent in prompt, sent
    assert fake_lm.last_request["model"] == "other-model" and fake_lm.last_request["temperature"] == 0.3
    # Outputs by type: text, a badge for the Literal, a table for the list of models, a tree for the rest.
    outputs = page.locator("#outputs")
    assert outputs.locator('[data-field="summary"] .text').count() == 1
    assert outputs.locator('[data-field="label"] .badge').inner_text() == "good"
    table = outputs.locator('[data-field="findings"] table')
    assert table.locator("th").all_inner_texts() == ["name", "score"]
    assert outputs.locator('[data-field="extra"] .tree').count() == 1
    meta = page.locator("#meta").inner_text()
    assert "Latency" in meta and "Tokens" in meta and "Cost" in meta and "openai/other-model" in meta
    request_id = page.locator("#meta code").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_a_rejected_input_is_marked_on_its_field(page: Any, server: ServerThread) -> None:
    open_program(page, server, "everything")
    field(page, "inputs.text").locator("textarea").fill("x")
    field(page, "inputs.count").locator("input").fill("9")  # the schema says at most 5
    field(page, "inputs.photo").locator('input[type="url"]').fill("https://example.com/a.png")
    page.locator("#run").click()
    page.wait_for_selector("#run-problem .problem", timeout=20_000)
    assert "422" in page.locator("#run-problem").inner_text()
    count = field(page, "inputs.count")
    assert "invalid" in (count.get_attribute("class") or "")
    assert "less than or equal to 5" in count.locator(".field-error").inner_text()
    assert count.locator("input").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "inputs.count"  # focus moved to it
    assert "invalid" not in (field(page, "inputs.text").get_attribute("class") or "")


# --- running --------------------------------------------------------------------------------------


def test_a_streamed_run_shows_tokens_before_the_final_outputs(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    answer = "The capital of France is Paris, on the Seine, a city of bridges."
    fake_lm.answers = {"answer": answer}
    fake_lm.chunk_chars, fake_lm.chunk_delay = 3, 0.1
    open_program(page, server, "echo")
    page.locator("textarea").first.fill("Capital of France?")
    page.locator("#run").click()
    page.wait_for_function(
        "(document.querySelector('[data-live=answer]') || {}).textContent?.length > 0", timeout=20_000
    )
    partial = page.locator("[data-live=answer]").inner_text()
    assert page.locator("#outputs .output").count() == 0  # tokens came first
    assert answer.startswith(partial) and partial != answer
    wait_for_outputs(page)
    assert page.locator('#outputs [data-field="answer"]').inner_text().endswith(answer)
    assert page.locator("[data-live]").count() == 0  # the live box folded into Outputs
    assert page.locator("#result").inner_text().count(answer) == 1
    assert page.locator('#outputs [data-field="mood"] .badge').inner_text() == "calm"


def steps_shown(page: Any) -> list[tuple[str, str]]:
    return [
        (li.locator(".step-name").inner_text(), li.get_attribute("data-state") or "")
        for li in page.locator("#steps li").all()
    ]


def test_every_step_ends_done_failed_or_stopped_and_live_boxes_fold_into_outputs(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    open_program(page, server, "two_steps")
    question = page.locator("textarea").first

    fake_lm.answers = {"query": "france capital", "answer": "Paris"}
    question.fill("Capital of France?")
    page.locator("#run").click()
    wait_for_outputs(page)
    assert steps_shown(page) == [("rewrite", "done"), ("answer", "done")]
    assert "Running" not in page.locator("#result").inner_text()
    assert page.locator("#live > *").count() == 0
    assert page.locator("#result").inner_text().count("Paris") == 1  # shown once, in Outputs

    fake_lm.answers = {"query": "the second step fails", "answer": "never"}
    fake_lm.when("the second step fails", AuthFailure())
    page.locator("#run").click()
    page.wait_for_function("document.getElementById('run-state').textContent === 'Failed.'", timeout=20_000)
    assert steps_shown(page) == [("rewrite", "done"), ("answer", "failed")]
    assert page.locator("#live > *").count() == 0

    fake_lm.answers = {"query": "the second step hangs", "answer": "never"}
    fake_lm.when("the second step hangs", Hang())
    page.locator("#run").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#steps li')].some((li) => li.textContent.startsWith('answer'))",
        timeout=20_000,
    )
    page.locator("#stop").click()
    page.wait_for_function("document.getElementById('run-state').textContent.startsWith('Stopped')")
    assert steps_shown(page) == [("rewrite", "done"), ("answer", "stopped")]
    assert page.locator("#live > *").count() == 0
    partial = page.locator("#outputs")
    assert "Partial outputs (stopped)" in partial.inner_text()
    assert "the second step hangs" in partial.inner_text()


def test_stop_cancels_the_call_and_the_lm_sees_the_abort(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.when("please hang", Hang())
    open_program(page, server, "echo")
    page.locator("textarea").first.fill("please hang")
    page.locator("#run").click()
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=20)
    page.locator("#stop").click()
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=20)
    assert "Stopped" in page.locator("#run-state").inner_text()
    assert page.locator("#run").is_enabled() and page.locator("#stop").is_disabled()


def test_program_outputs_holding_markup_are_shown_as_text(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    markup = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    fake_lm.answers = {"answer": markup}
    open_program(page, server, "echo")
    page.locator("textarea").first.fill("Say something dangerous")
    page.locator("#run").click()
    wait_for_outputs(page)
    assert page.locator('#outputs [data-field="answer"] .text').inner_text() == markup
    assert page.locator("#result img, #result script").count() == 0
    assert page.evaluate("window.__xss") is None


def test_inspect_shows_each_step_with_its_inputs_and_outputs_as_text(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    query = "<b>france</b> capital"
    fake_lm.answers = {"query": query, "answer": "Paris"}
    open_program(page, server, "two_steps")
    page.locator("textarea").first.fill("Capital of France?")
    page.locator("#run").click()
    wait_for_outputs(page)
    assert page.locator("#trace").is_hidden(), "no trace unless Inspect is on"
    page.locator("#opt-trace").check()
    page.locator("#run").click()
    page.wait_for_selector("#trace .trace-step", timeout=20_000)
    steps = page.locator("#trace .trace-step")
    assert [step.get_attribute("data-predictor") for step in steps.all()] == ["rewrite", "answer"]
    rewrite, answer = steps.nth(0), steps.nth(1)
    rewrite.locator(".trace-outputs summary").click()
    assert rewrite.locator('.trace-outputs [data-field="query"] .text').inner_text() == query
    answer.locator(".trace-inputs summary").click()
    assert answer.locator('.trace-inputs [data-field="query"] .text').inner_text() == query
    assert answer.locator('.trace-inputs [data-field="question"] .text').inner_text() == "Capital of France?"
    assert answer.locator('.trace-outputs [data-field="answer"] .text').inner_text() == "Paris"
    assert page.locator("#trace b").count() == 0


def test_inspect_shows_each_lm_calls_prompt_and_raw_response_as_text(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    question = '<img src=x onerror="window.__xss=1">Capital of France?'
    query = "<script>window.__xss=2</script>france capital"
    fake_lm.answers = {"query": query, "answer": "Paris"}
    open_program(page, server, "two_steps")
    page.locator("textarea").first.fill(question)
    page.locator("#opt-prompts").check()
    page.locator("#run").click()
    page.wait_for_selector("#prompts .lm-call", timeout=20_000)
    assert page.locator("#trace").is_hidden(), "prompts without the trace when only they are asked"
    calls = page.locator("#prompts .lm-call")
    assert calls.count() == 2
    assert page.locator("#prompts h3").inner_text() == "Prompts (2 LM calls)"
    rewrite, answer = calls.nth(0), calls.nth(1)
    assert "LM call 1 · openai/fake-model" in rewrite.locator("summary").inner_text()
    rewrite.locator("summary").click()
    roles = [m.get_attribute("data-role") for m in rewrite.locator(".messages > li").all()]
    assert roles == ["system", "user"]
    assert question in rewrite.locator('[data-role="user"] .text').inner_text()
    assert query in rewrite.locator(".response .text").inner_text()
    answer.locator("summary").click()
    assert query in answer.locator('[data-role="user"] .text').inner_text()
    assert "Paris" in answer.locator(".response .text").inner_text()
    assert page.locator("#prompts img, #prompts script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert FAKE_KEY not in page.locator("#prompts").inner_text()


def test_copy_as_snippets_run_as_shown(page: Any, server: ServerThread, fake_lm: FakeLM) -> None:
    """What the page shows after a run is the same call: curl, the Python client, the OpenAI SDK
    and `dspy-serve call`, each run as shown, answer with the program's output."""
    fake_lm.answers = {"answer": 'It\'s "Lima"'}
    open_program(page, server, "echo")
    page.locator("textarea").first.fill("Capital of Peru? (it's 'quoted')")
    page.locator("#options-box summary").click()
    page.locator("#opt-max_tokens").fill("100")
    page.locator("#run").click()
    wait_for_outputs(page)
    page.locator("#share summary").click()
    snippet = {
        kind: page.locator(f'[data-snippet="{kind}"]').inner_text()
        for kind in ("curl", "python", "openai", "cli")
    }
    env = {name: value for name, value in os.environ.items() if name != "DSPY_SERVE_CLIENT_KEY"}
    curl = subprocess.run(
        ["bash", "-c", snippet["curl"]], capture_output=True, text=True, timeout=30, env=env
    )
    assert json.loads(curl.stdout)["outputs"]["answer"] == 'It\'s "Lima"', curl.stderr
    assert "Capital of Peru? (it's 'quoted')" in json.dumps(fake_lm.last_request)
    sent = fake_lm.last_request
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 100, sent.keys()
    for kind in ("python", "openai"):
        ran = subprocess.run(
            [sys.executable, "-c", snippet[kind]], capture_output=True, text=True, timeout=120, env=env
        )
        assert ran.returncode == 0 and "Lima" in ran.stdout, (kind, ran.stderr[-2000:])
    assert "program(question=\"Capital of Peru? (it's 'quoted')\")" in snippet["python"]
    # With options, `dspy-serve call` sends the whole body.
    assert " --json " in snippet["cli"]
    command = snippet["cli"].replace("dspy-serve call", f"{sys.executable} -m dspy_serve call", 1)
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0 and json.loads(ran.stdout)["outputs"]["answer"] == 'It\'s "Lima"', ran.stderr
    sent = fake_lm.last_request
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 100


def test_a_run_reopens_from_its_link_and_from_the_recent_runs(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    open_program(page, server, "echo")
    page.locator("textarea").first.fill("Capital of Chile?")
    page.locator("#run").click()
    wait_for_outputs(page)
    link = page.url
    assert "#run=" in link
    fresh = page.context.new_page()
    fresh.goto(link)
    fresh.wait_for_selector("#workbench:not([hidden])", timeout=20_000)
    assert fresh.locator("textarea").first.input_value() == "Capital of Chile?"
    fresh.locator("textarea").first.fill("something else")
    fresh.locator("#recent summary").click()
    entry = fresh.locator("#recent-list li").first
    assert "Capital of Chile?" in entry.inner_text() and "ok" in entry.inner_text()
    started = fake_lm.requests_started
    entry.get_by_role("button", name="Run again").click()
    wait_for_outputs(fresh)
    assert fresh.locator("textarea").first.input_value() == "Capital of Chile?"
    assert fake_lm.requests_started == started + 1
    assert fresh.locator("#recent-list li").count() == 2


# --- batch and metrics ----------------------------------------------------------------------------


def test_batch_upload_runs_every_line_and_downloads_the_results(
    page: Any, server: ServerThread, fake_lm: FakeLM, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris, France"}
    lines = [{"question": f"Question {i}?"} for i in range(10)] + [{"wrong": 1}]
    upload = tmp_path / "inputs.jsonl"
    upload.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    open_program(page, server, "echo")
    page.locator("#batch summary").click()
    assert json.loads(page.locator("#batch-input").get_attribute("placeholder") or "") == {"question": "..."}
    page.locator("#batch-file").set_input_files(str(upload))
    page.wait_for_function("document.getElementById('batch-input').value.includes('Question 9?')")
    page.locator("#batch-run").click()
    page.wait_for_function(
        "document.getElementById('batch-state').textContent.includes('done')", timeout=30_000
    )
    assert page.locator("#batch-state").inner_text() == "11 of 11 done, 1 failed."
    assert page.evaluate("document.getElementById('batch-progress').value") == 11
    assert page.locator("#batch-results tbody tr").count() == 11
    # Items are numbered from 1 everywhere; the table shows each item's inputs; a rejected item
    # says which field and why, as the API does.
    headers = page.locator("#batch-results th").all_inner_texts()
    assert headers == ["#", "question (input)", "wrong (input)", "answer", "mood", "error"]
    fourth = page.locator('#batch-results tr[data-item="4"]')
    assert fourth.locator("td").first.inner_text() == "4"
    assert fourth.locator('[data-input="question"]').inner_text() == "Question 3?"
    rejected = page.locator('#batch-results tr[data-item="11"] [data-error]').inner_text()
    assert "wrong: Extra inputs are not permitted" in rejected and "question: Field required" in rejected
    assert "Invalid input: Invalid input" not in rejected

    with page.expect_download() as download:
        page.locator("#batch-jsonl").click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [r["item"] for r in records] == list(range(1, 12))
    assert records[0] == {
        "item": 1,
        "inputs": {"question": "Question 0?"},
        "outputs": {"answer": "Paris, France", "mood": "calm"},
    }
    assert records[10]["error"]["status"] == 422
    with page.expect_download() as download:
        page.locator("#batch-csv").click()
    assert download.value.suggested_filename == "echo-results.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[3] == {
        "item": "4",
        "question": "Question 3?",
        "answer": "Paris, France",
        "mood": "calm",
        "error": "",
    }
    assert rows[10]["error"] == rejected

    # CSV pasted, with a quoted comma, runs too.
    page.locator("#batch-input").fill('question\n"Paris, or Lyon?"\nRome?\n')
    page.locator("#batch-run").click()
    page.wait_for_function(
        "document.getElementById('batch-state').textContent.startsWith('2 of 2')", timeout=30_000
    )
    assert "Paris, or Lyon?" in json.dumps(fake_lm.requests)


# Every value the batch progress bar takes: setting `progress.value` sets its `value` attribute, and
# each change's old value is recorded, so no value is missed however quickly the next one follows.
WATCH_PROGRESS = """() => {
  const bar = document.getElementById("batch-progress");
  window.__progress = [];
  new MutationObserver((records) => records.forEach((r) => window.__progress.push(r.oldValue)))
    .observe(bar, { attributes: true, attributeFilter: ["value"], attributeOldValue: true });
}"""


def test_batch_progress_moves_per_item_and_the_results_keep_input_order(
    page: Any, server: ServerThread, fake_lm: FakeLM
) -> None:
    def answer(body: dict[str, Any]) -> dict[str, str]:
        found = re.search(r"Question (\d+)\?", prompt_text(body).split("Capital of Peru?")[-1])
        return {"answer": f"Answer {found.group(1) if found else '?'}", "mood": "calm"}

    fake_lm.answers, fake_lm.latency = answer, 0.2
    fake_lm.when("Question 0?", Slow(1.0))  # the first item finishes last
    items = [{"question": f"Question {i}?"} for i in range(6)]
    open_program(page, server, "echo")
    page.locator("#batch summary").click()
    page.locator("#batch-input").fill("\n".join(json.dumps(item) for item in items))
    page.evaluate(WATCH_PROGRESS)
    page.locator("#batch-run").click()
    page.wait_for_function(
        "document.getElementById('batch-state').textContent.includes('done')", timeout=30_000
    )
    seen = page.evaluate("[...window.__progress, document.getElementById('batch-progress').value]")
    assert sorted({int(float(value)) for value in seen}) == list(range(7)), seen
    assert page.locator("#batch-state").inner_text() == "6 of 6 done, 0 failed."
    assert fake_lm.requests_started == 6
    with page.expect_download() as download:
        page.locator("#batch-jsonl").click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [(r["item"], r["inputs"], r["outputs"]["answer"]) for r in records] == [
        (i + 1, item, f"Answer {i}") for i, item in enumerate(items)
    ]
    # The placeholder is a line of this program's own inputs.
    open_program(page, server, "two_steps")
    page.locator("#batch summary").click()
    assert json.loads(page.locator("#batch-input").get_attribute("placeholder") or "") == {"question": "..."}
    open_program(page, server, "everything")
    page.locator("#batch summary").click()
    placeholder = json.loads(page.locator("#batch-input").get_attribute("placeholder") or "")
    assert "text" in placeholder and "question" not in placeholder


def test_metrics_show_this_programs_calls_and_latency(page: Any, server: ServerThread) -> None:
    for _ in range(2):
        assert (
            httpx.post(
                server.base_url + "/echo/invoke", json={"inputs": {"question": "q"}}, timeout=20
            ).status_code
            == 200
        )
    exposition = httpx.get(server.base_url + "/metrics").text
    calls = sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("dspy_serve_requests_total{") and 'program="echo"' in line
    )
    open_program(page, server, "echo")
    page.locator("#metrics summary").click()
    requests_shown = page.locator('[data-metric="Requests"]')
    requests_shown.wait_for(timeout=20_000)
    assert float(requests_shown.inner_text()) == calls >= 2
    assert page.locator('[data-metric="Latency p50"]').inner_text().endswith(" ms")
    # openai/fake-model has no known price: its cost is unknown, not $0.
    assert page.locator('[data-metric="Cost"]').inner_text() == "unknown (no price known for this model)"


# --- accessibility -------------------------------------------------------------------------------


def test_keyboard_only_fills_and_runs_with_a_visible_focus(page: Any, server: ServerThread) -> None:
    open_program(page, server, "echo")
    for _ in range(30):
        if page.evaluate("document.activeElement.name") == "inputs.question":
            break
        page.keyboard.press("Tab")
    else:
        pytest.fail("Tab never reached the question field")
    page.keyboard.type("Capital of Japan?")
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "run":
            break
        page.keyboard.press("Tab")
    else:
        pytest.fail("Tab never reached the Run button")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    wait_for_outputs(page)
    # Ctrl+Enter from a field runs again.
    page.locator("textarea").first.focus()
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelectorAll('#recent-list li .badge').length === 2", timeout=20_000)


# --- API keys ---------------------------------------------------------------------------------------


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_the_tab_only(
    chromium: Any, fake_lm: FakeLM, provider_env: None
) -> None:
    settings = fake_settings(fake_lm, programs=[f"echo={TARGET}:echo"], api_keys=[KEY])
    with serving(create_app(settings)) as keyed:
        assert httpx.get(keyed.base_url + "/programs").status_code == 401
        assert (
            httpx.post(keyed.base_url + "/echo/invoke", json={"inputs": {"question": "q"}}).status_code == 401
        )
        assert httpx.get(keyed.base_url + "/playground/echo").status_code == 200  # a file, no data
        page = offline_page(chromium, keyed.base_url, bypass_csp=True)
        try:
            page.goto(keyed.base_url + "/playground/echo")
            page.locator("#key-panel").wait_for(state="visible", timeout=20_000)
            assert page.evaluate("document.activeElement.id") == "key-input"
            page.locator("#key-input").fill("not-a-key")
            page.keyboard.press("Enter")
            page.wait_for_function("document.getElementById('key-message').textContent.includes('refused')")
            page.locator("#key-input").fill(KEY)
            page.keyboard.press("Enter")
            page.wait_for_selector("#workbench:not([hidden])", timeout=20_000)
            page.locator("textarea").first.fill("Capital of Italy?")
            page.locator("#run").click()
            wait_for_outputs(page)
            assert page.evaluate("sessionStorage.getItem('dspy-serve:key')") == KEY
            stored = page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
            assert KEY not in stored and "Capital of Italy?" in stored
            page.locator("#share summary").click()
            assert KEY not in page.locator("#snippets").inner_text()
            assert "$DSPY_SERVE_CLIENT_KEY" in page.locator('[data-snippet="curl"]').inner_text()
        finally:
            page.context.close()


# --- plain HTTP -----------------------------------------------------------------------------------


def test_the_pages_are_static_small_and_locked_down(server: ServerThread) -> None:
    from dspy_serve.web.playground import STATIC_DIR

    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        total = 0
        for path in ("/", "/playground/echo", "/playground/no-such-program"):
            response = http.get(path)
            assert response.status_code == 200 and "echo" not in response.text  # no data in the page
            assert "script-src 'self'" in response.headers["content-security-policy"]
        for asset in sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css")):
            response = http.get(f"/playground/assets/{asset}")
            assert response.status_code == 200 and response.headers.get("etag"), asset
            total += len(response.content)
        total += len(http.get("/playground/echo").content)
    assert total < 150_000, total
    assert not any("cdn" in p.read_text() or "http://" in p.read_text() for p in STATIC_DIR.iterdir())


def test_no_playground_turns_the_pages_off(fake_lm: FakeLM, provider_key: str) -> None:
    from dspy_serve.cli import main

    context = main.commands["run"].make_context("run", ["--no-playground", f"echo={TARGET}:echo"])
    assert context.params["playground"] is False
    app = create_app(fake_settings(fake_lm, programs=[f"echo={TARGET}:echo"], playground=False))
    with serving(app) as running, httpx.Client(base_url=running.base_url, timeout=10) as http:
        assert http.get("/playground/echo").status_code == 404
        assert http.get("/playground/assets/core.js").status_code == 404
        index = http.get("/")
        assert index.status_code == 200 and "playground" not in index.text  # the plain index


def test_with_keys_the_landing_page_says_it_waits_for_one_and_a_restricted_key_sees_its_models(
    chromium: Any, fake_lm: FakeLM, provider_env: None, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"one-model:{KEY} models=openai/fake-model\n")
    settings = fake_settings(
        fake_lm, programs=[f"echo={TARGET}:echo"], api_keys_file=keys, allow_models=["openai/other-model"]
    )
    with serving(create_app(settings)) as keyed:
        described = httpx.get(keyed.base_url + "/programs/echo", headers={"Authorization": f"Bearer {KEY}"})
        assert described.json()["allowed_models"] == ["openai/fake-model"]
        page = offline_page(chromium, keyed.base_url, viewport={"width": 420, "height": 900})
        try:
            page.goto(keyed.base_url + "/")
            page.locator("#key-panel").wait_for(state="visible", timeout=20_000)
            assert "needs an API key" in page.locator("#loading").inner_text()
            page.locator("#key-input").fill(KEY)
            page.keyboard.press("Enter")
            card = page.locator('.card[data-program="echo"]')
            card.wait_for(timeout=20_000)
            assert "allowed" not in card.inner_text()
            card.locator("summary", has_text="Call it").click()
            snippet = card.locator('[data-snippet="curl"]')
            # Code keeps its lines in a narrow card (it scrolls), never broken mid-word.
            assert snippet.evaluate("el => getComputedStyle(el).whiteSpace") == "pre"
            wide = page.evaluate(
                "[...document.querySelectorAll('body *')]"
                ".filter((el) => el.getBoundingClientRect().right > 420).map((el) => el.tagName)"
            )
            assert page.evaluate("document.documentElement.scrollWidth") <= 420, wide
        finally:
            page.context.close()
