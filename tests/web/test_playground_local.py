"""The playground on the embedded model: what the README's demo serves (examples/qa.py), driven in
chromium. The model's words are its own: the test asserts their shape, never their content."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dspy_serve import ServeSettings, create_app
from dspy_serve.lm.local_runtime import choose_runtime
from tests.support.browser import browser, offline_page
from tests.support.local_model import require
from tests.support.servers import ServerThread, serving
from tests.support.settings import EXAMPLES

pytestmark = pytest.mark.local_model  # on the runtime `auto` picks: xllamacpp where the CPU can

# Records, in the page, when the first token and the final output appeared (a MutationObserver
# sees each change as it happens, so the order cannot depend on when the test looks).
WATCH = """
window.__seen = {};
new MutationObserver(() => {
  const live = document.querySelector("[data-live=answer]"), now = performance.now();
  if (live && live.textContent.length && !window.__seen.token) window.__seen.token = now;
  if (document.querySelector("#outputs .output") && !window.__seen.output) window.__seen.output = now;
}).observe(document.body, { childList: true, subtree: true, characterData: true });
"""


@pytest.fixture(scope="module")
def demo() -> Iterator[ServerThread]:
    require(choose_runtime().name)
    settings = ServeSettings(
        programs=[f"qa={EXAMPLES / 'qa.py'}:program"],
        artifacts=[str(EXAMPLES / "qa.json")],
        max_tokens=48,  # a short answer: the test stays quick on two shared cores
        timeout=60,
    )
    with serving(create_app(settings)) as server:
        yield server


def test_a_streamed_run_on_the_embedded_model_shows_tokens_then_the_answer(demo: ServerThread) -> None:
    with browser() as chromium:
        page: Any = offline_page(chromium, demo.base_url, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{demo.base_url}/playground/qa")
        page.wait_for_selector("#workbench:not([hidden])", timeout=20_000)
        assert "local/SmolLM2-135M-Instruct" in page.locator("#facts").inner_text()
        page.evaluate(WATCH)
        page.locator("textarea").first.fill("What is the capital of France?")
        page.locator("#run").click()
        page.wait_for_selector("#outputs .output", timeout=90_000)
        seen = page.evaluate("window.__seen")
        answer = page.locator('#outputs [data-field="answer"] .text').inner_text()
        live_boxes = page.locator("[data-live]").count()
        state = page.locator("#run-state").inner_text()
        page.context.close()
    assert not errors, errors
    assert answer.strip(), "the answer field is not empty"
    assert seen.get("token") is not None and seen["token"] < seen["output"], seen
    assert live_boxes == 0, "the live boxes folded into Outputs when the run ended"
    assert state.startswith("Done in")
