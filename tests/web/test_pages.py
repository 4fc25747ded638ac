"""The pages a person opens: `/`, `/docs` and `/redoc`, served whole from this process (offline)."""

from __future__ import annotations

from collections.abc import Iterator

import dspy
import httpx
import pytest

from dspy_serve import create_app
from tests.support.browser import browser, offline_page
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    fake_lm.answers = {"answer": "Paris"}
    shouty = dspy.Signature("text -> verdict", "Judge <script>alert('x')</script> & friends.")
    app = create_app(
        # playground=False: "/" is then the plain server-rendered index these tests pin.
        fake_settings(fake_lm, programs=[f"qa={PROGRAMS / 'serving.py'}:qa"], playground=False),
        programs={"judge": shouty},
    )
    with serving(app) as running:
        yield running


def test_docs_and_redoc_load_their_assets_from_this_server(server: ServerThread) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for page, assets in (
            ("/docs", ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css")),
            ("/redoc", ("/docs/assets/redoc.standalone.js",)),
        ):
            html = http.get(page).text
            assert "cdn." not in html and "fonts.googleapis" not in html, page
            for asset in assets:
                assert asset in html
                response = http.get(asset)
                assert response.status_code == 200 and len(response.content) > 100_000, asset


def test_the_landing_page_lists_the_programs_with_their_descriptions_escaped(server: ServerThread) -> None:
    page = httpx.get(server.base_url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<a href="/programs/qa"><strong>qa</strong></a>' in html
    assert "Answer the question in a few words." in html
    assert "Judge &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends." in html
    assert "<script>" not in html
    assert 'href="/docs"' in html and 'href="/redoc"' in html


def test_the_docs_examples_are_requests_this_server_accepts(server: ServerThread) -> None:
    """Swagger's "Try it out" fills each field from its example: those must be allowed values."""
    spec = httpx.get(server.base_url + "/openapi.json", timeout=10).json()
    options = spec["components"]["schemas"]["CallOptions"]["properties"]
    example = {name: schema["examples"][0] for name, schema in options.items()}
    assert example == {
        "model": "openai/fake-model",
        "temperature": 0.7,
        "max_tokens": 256,
        "trace": False,
        "prompts": False,
    }
    response = httpx.post(
        server.base_url + "/qa/invoke",
        json={"inputs": {"question": "string"}, "options": example},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_swagger_ui_renders_offline_and_try_it_out_succeeds(server: ServerThread) -> None:
    """A real browser with no network but loopback: the page renders every operation, and
    "Try it out" then "Execute" on an invoke, with the example as given, answers 200; ReDoc
    renders too."""
    with browser() as chromium:
        # Anything not served by this server fails, as it would offline.
        page = offline_page(chromium, server.base_url)
        page.goto(server.base_url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        summaries = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/qa/invoke" in [s.replace("\u200b", "") for s in summaries]
        operation = page.locator("#operations-qa-qa_invoke")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip().startswith("200"), operation.inner_text()

        page.goto(server.base_url + "/redoc")
        page.locator(".api-content").wait_for(timeout=30_000)
        assert "Run qa" in page.locator(".api-content").inner_text()  # ReDoc rendered the operations


def test_the_api_docs_say_where_v1_and_mcp_are_described(server: ServerThread) -> None:
    description = httpx.get(server.base_url + "/openapi.json", timeout=10).json()["info"]["description"]
    assert "/v1/chat/completions" in description and "docs/openai.md" in description
    assert "/mcp" in description and "docs/mcp.md" in description
