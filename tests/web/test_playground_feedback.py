"""Rating an answer in the playground (#26), in a real offline chromium under the page's own
Content-Security-Policy, against a real server with capture on: what the page sends is read back
from the store."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.browser import offline_page
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import FAKE_KEY, PROGRAMS, fake_settings
from tests.support.stores import read_store as read_store_here

KITCHEN = f"kitchen={PROGRAMS / 'serving.py'}:kitchen"
ECHO = f"echo={PROGRAMS / 'playground_programs.py'}:echo"
KEY = "key-alice"
ANSWER = {"label": "pos", "score": 0.5, "count": 1, "flag": True, "person": {"name": "Ada", "age": 3}}

expect = pytest.importorskip("playwright.sync_api").expect


@contextmanager
def serving_kitchen(fake: FakeLM, store: str, **overrides: Any) -> Iterator[ServerThread]:
    """kitchen captured (echo is not), with feedback tokens."""
    settings = fake_settings(
        fake,
        programs=[KITCHEN, ECHO],
        capture=["kitchen"],
        store=store,
        feedback_token_secret="playground-feedback-secret",
        **overrides,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", FAKE_KEY)
        with serving(create_app(settings)) as running:
            yield running


@pytest.fixture(scope="module")
def server(
    _fake_lm_server: FakeLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, str]]:
    """API keys off: the page rates with each answer's feedback token."""
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
    with serving_kitchen(_fake_lm_server, store) as running:
        yield running, store


@contextmanager
def browsing(chromium: Any, base_url: str) -> Iterator[Any]:
    """A page under the real CSP (no bypass): a violation or a script error fails the test."""
    page = offline_page(chromium, base_url)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield page
    finally:
        page.context.close()
    # The refusals the tests provoke (the 401 asking for the key, a 422, a 404) are the only errors.
    assert not [e for e in errors if not re.search(r"status of (401|404|422)", e)], errors


@pytest.fixture
def page(chromium: Any, server: tuple[ServerThread, str], fake_lm: FakeLM) -> Iterator[Any]:
    fake_lm.answers = ANSWER
    with browsing(chromium, server[0].base_url) as page:
        yield page


def read_store(store: str, query: str) -> list[dict[str, Any]]:
    """The store's rows, read from another thread (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(read_store_here, store, query).result()


def open_program(page: Any, base_url: str, name: str, key: str | None = None) -> None:
    page.goto(f"{base_url}/playground/{name}")
    if key is not None:
        page.locator("#key-input").fill(key)
        page.keyboard.press("Enter")
    expect(page.locator("#workbench")).to_be_visible(timeout=20_000)


def run_kitchen(page: Any) -> None:
    page.locator('[data-path="inputs.text"] textarea').fill("A fine day")
    page.locator('[data-path="inputs.tags.0"] input').fill("weather")
    page.locator("#run").click()
    expect(page.locator("#feedback")).to_be_visible(timeout=20_000)


def send(page: Any, button: str) -> dict[str, Any]:
    """Click a feedback button; the body the page POSTed, and its headers."""
    with page.expect_request(lambda request: request.url.endswith("/kitchen/feedback")) as sent:
        page.locator(button).click()
    return {"body": sent.value.post_data_json, "headers": sent.value.headers}


def feedback_row(store: str, call_id: str) -> dict[str, Any]:
    [row] = read_store(store, f"SELECT * FROM feedback WHERE call_id = '{call_id}'")
    outputs = row["outputs"]
    return {**row, "outputs": json.loads(outputs) if isinstance(outputs, str) else outputs}


def test_an_answer_rated_up_then_down_keeps_the_second_rating_and_the_first_in_history(
    page: Any, server: tuple[ServerThread, str]
) -> None:
    url, store = server
    open_program(page, url.base_url, "kitchen")
    run_kitchen(page)
    up, down = page.locator("#rate-up"), page.locator("#rate-down")
    expect(up).to_have_attribute("aria-pressed", "false")

    first = send(page, "#rate-up")
    expect(page.locator("#feedback-state")).to_have_text("Rated good.")
    expect(up).to_have_attribute("aria-pressed", "true")
    call_id = first["body"]["call_id"]
    assert first["body"] == {"call_id": call_id, "score": True}
    # The tab has no key: the answer's own feedback token goes with it.
    assert first["headers"]["x-feedback-token"] and "authorization" not in first["headers"]
    [call] = read_store(store, f"SELECT program FROM calls WHERE call_id = '{call_id}'")
    assert call == {"program": "kitchen"}
    assert feedback_row(store, call_id)["score"] == 1.0

    page.locator("#feedback-comment").fill("the label is <b>wrong</b>")
    second = send(page, "#rate-down")
    expect(page.locator("#feedback-state")).to_have_text("Rated bad. It replaces your earlier feedback.")
    expect(up).to_have_attribute("aria-pressed", "false")
    expect(down).to_have_attribute("aria-pressed", "true")
    assert second["body"] == {"call_id": call_id, "score": False, "comment": "the label is <b>wrong</b>"}
    row = feedback_row(store, call_id)
    assert (row["key_name"], row["score"], row["comment"], row["outputs"]) == (
        "",  # no key: the token's holder rates for the call's own (no) key
        0.0,
        "the label is <b>wrong</b>",
        None,
    )
    [old] = read_store(store, f"SELECT score, comment FROM feedback_history WHERE call_id = '{call_id}'")
    assert old == {"score": 1.0, "comment": None}

    # A new answer starts unrated.
    run_kitchen(page)
    expect(page.locator("#feedback-state")).to_have_text("")
    expect(down).to_have_attribute("aria-pressed", "false")


def test_a_correction_that_does_not_fit_names_its_field_and_one_that_fits_is_stored(
    page: Any, server: tuple[ServerThread, str]
) -> None:
    url, store = server
    open_program(page, url.base_url, "kitchen")
    run_kitchen(page)
    call_id = send(page, "#rate-down")["body"]["call_id"]
    expect(page.locator("#feedback-state")).to_have_text("Rated bad.")

    page.locator("#correct summary").click()
    editor = page.locator("#correction")
    # Generated from the output schema, filled with the answer: a select for the Literal, number
    # inputs, a switch for the bool, a fieldset for the object.
    label = editor.locator('[data-path="outputs.label"] select')
    assert label.locator("option").all_inner_texts() == ["pos", "neg"]
    expect(label.locator("option:checked")).to_have_text("pos")
    expect(editor.locator('[data-path="outputs.score"] input[type="number"]')).to_have_value("0.5")
    expect(editor.locator('[data-path="outputs.flag"] input[role="switch"]')).to_be_checked()
    age = editor.locator('[data-path="outputs.person.age"]')
    expect(age.locator("input")).to_have_value("3")

    page.locator("#correction-send").click()
    expect(page.locator("#feedback-state")).to_have_text(
        "Nothing changed: edit the fields that were wrong first."
    )

    age.locator("input").fill("")  # a person must have an age: the server refuses it
    sent = send(page, "#correction-send")
    assert sent["body"] == {
        "call_id": call_id,
        "score": False,
        "outputs": {"person": {"name": "Ada", "age": None}},
    }
    problem = page.locator("#feedback-problem")
    expect(problem).to_contain_text("422")
    expect(problem.locator("li code")).to_have_text("outputs.person.age")
    expect(age.locator(".field-error")).to_contain_text("valid integer")
    expect(age.locator("input")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#feedback-state")).to_have_text("Not saved.")
    assert feedback_row(store, call_id)["outputs"] is None  # the rating stands, unchanged

    age.locator("input").fill("4")
    label.select_option(label="neg")
    page.locator("#feedback-comment").fill("older, and negative")
    sent = send(page, "#correction-send")
    expect(page.locator("#feedback-state")).to_have_text(
        "Correction sent. It replaces your earlier feedback."
    )
    expect(problem).to_be_empty()
    expect(age).not_to_have_class(re.compile("invalid"))
    correction = {"label": "neg", "person": {"name": "Ada", "age": 4}}
    assert sent["body"] == {
        "call_id": call_id,
        "score": False,
        "outputs": correction,
        "comment": "older, and negative",
    }
    row = feedback_row(store, call_id)
    assert (row["score"], row["outputs"], row["comment"]) == (0.0, correction, "older, and negative")

    # Changing the rating afterwards keeps the correction: each send carries the whole state.
    send(page, "#rate-up")
    expect(page.locator("#rate-up")).to_have_attribute("aria-pressed", "true")
    row = feedback_row(store, call_id)
    assert (row["score"], row["outputs"], row["comment"]) == (1.0, correction, "older, and negative")


def test_a_program_without_capture_shows_no_rating_buttons(
    page: Any, server: tuple[ServerThread, str]
) -> None:
    url, _ = server
    endpoints = httpx.get(f"{url.base_url}/programs", timeout=10).json()
    assert {p["name"]: sorted(p["endpoints"]) for p in endpoints} == {
        "kitchen": ["batch", "feedback", "invoke", "stream"],
        "echo": ["batch", "invoke", "stream"],
    }
    open_program(page, url.base_url, "echo")
    page.locator("textarea").first.fill("Capital of Peru?")
    page.locator("#run").click()
    expect(page.locator("#outputs .output").first).to_be_visible(timeout=20_000)
    expect(page.locator("#feedback")).to_be_hidden()
    assert page.locator("#rate-up").count() == 0


def test_the_servers_error_is_shown_as_text(page: Any, server: tuple[ServerThread, str]) -> None:
    """A refusal whose detail holds markup (here the server's own 404 for a call it no longer
    knows, with the call id the page sent) is shown as text."""
    url, _ = server
    open_program(page, url.base_url, "kitchen")
    run_kitchen(page)

    # The page's answer is replaced by one the server never made: its call id is markup (sent
    # without the answer's token, which names another call).
    def forge(route: Any) -> None:
        headers = {k: v for k, v in route.request.headers.items() if k != "x-feedback-token"}
        body = {**route.request.post_data_json, "call_id": "<img src=x onerror=alert(1)>"}
        route.continue_(headers=headers, post_data=json.dumps(body))

    page.route("**/kitchen/feedback", forge)
    page.locator("#rate-up").click()
    problem = page.locator("#feedback-problem")
    expect(problem).to_contain_text("404")
    expect(problem).to_contain_text("<img src=x onerror=alert(1)>")
    assert problem.locator("img").count() == 0


def test_a_tab_with_a_key_rates_with_it_and_an_expired_token_falls_back_to_the_key_path(
    chromium: Any, fake_lm: FakeLM, tmp_path: Path
) -> None:
    fake_lm.answers = ANSWER
    keyed = f"sqlite:///{tmp_path / 'keyed.db'}"
    with (
        serving_kitchen(fake_lm, keyed, api_keys=[f"alice:{KEY}"]) as server,
        browsing(chromium, server.base_url) as page,
    ):
        open_program(page, server.base_url, "kitchen", key=KEY)
        run_kitchen(page)
        sent = send(page, "#rate-up")
        expect(page.locator("#feedback-state")).to_have_text("Rated good.")
        assert (
            sent["headers"]["authorization"] == f"Bearer {KEY}" and "x-feedback-token" not in sent["headers"]
        )
        assert feedback_row(keyed, sent["body"]["call_id"])["key_name"] == "alice"

    short = f"sqlite:///{tmp_path / 'short.db'}"
    with (
        serving_kitchen(fake_lm, short, feedback_token_ttl=0.5) as server,
        browsing(chromium, server.base_url) as page,
    ):
        open_program(page, server.base_url, "kitchen")
        run_kitchen(page)
        page.wait_for_timeout(1_000)  # the answer's token has expired
        with page.expect_response(lambda response: response.status == 401) as expired:
            sent = send(page, "#rate-down")
        assert expired.value.request.headers["x-feedback-token"]
        expect(page.locator("#feedback-state")).to_have_text("Rated bad.")
        assert feedback_row(short, sent["body"]["call_id"])["score"] == 0.0
