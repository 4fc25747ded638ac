"""The pages a person opens: `/`, `/docs` and `/redoc`, served whole from this process (offline).

Program text in `/docs` and `/redoc` is text, never markup that runs. A docstring, a field's
`desc`, and a JSON artifact's `signature.instructions` or field `description` reach the OpenAPI
document, which Swagger UI and ReDoc render as Markdown (which allows HTML). An artifact's author
is a less trusted role than the operator (docs/security.md): a script there would run in the
server's origin, where the playground keeps a caller's key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import dspy
import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

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


# --- untrusted program text in the docs pages (issue #22) -------------------------------------

WHERE = ("docstring", "field-desc", "artifact-instructions", "artifact-field")


def payload(where: str) -> str:
    """Visible text to wait for, then an image whose error handler would record that it ran."""
    return (
        f"Marker {where} here. "
        f'<img src="missing-{where}.png" onerror="window.ran=(window.ran||[]).concat(\'{where}\')">'
    )


class Judge(dspy.Signature):
    text: str = dspy.InputField(desc=payload("field-desc"))
    verdict: str = dspy.OutputField()


Judge.__doc__ = payload("docstring")
Judge = Judge.with_instructions(payload("docstring"))


@pytest.fixture(scope="module")
def xss_server(_fake_lm_server: FakeLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    artifact = tmp_path_factory.mktemp("xss") / "qa.json"
    dspy.Predict("question -> answer").save(str(artifact))
    state = json.loads(artifact.read_text())
    state["signature"]["instructions"] = payload("artifact-instructions")
    state["signature"]["fields"][0]["description"] = payload("artifact-field")
    artifact.write_text(json.dumps(state))
    settings = fake_settings(
        _fake_lm_server,
        programs=[f"qa={PROGRAMS / 'serving.py'}:qa"],
        artifacts=[f"qa={artifact}"],
        playground=False,
    )
    with serving(create_app(settings, programs={"judge": Judge})) as running:
        yield running


def test_the_payloads_reach_the_openapi_document(xss_server: ServerThread) -> None:
    """The premise of the browser tests: every payload is in what the pages render."""
    spec = httpx.get(xss_server.base_url + "/openapi.json", timeout=10).text
    for where in WHERE:
        assert f"missing-{where}.png" in spec, where


def test_redoc_renders_program_text_without_running_it(xss_server: ServerThread) -> None:
    with browser() as chromium:
        page = watched_page(chromium, xss_server.base_url)
        page.goto(xss_server.base_url + "/redoc")
        page.locator(".api-content").wait_for(timeout=30_000)
        # Open the programs' inputs, so their fields' descriptions render too.
        for toggle in page.locator("button[aria-label='expand inputs']").all():
            toggle.click()
        assert_rendered_and_never_ran(page, rendered_text(page, ".api-content"))


def test_swagger_ui_renders_program_text_without_running_it(xss_server: ServerThread) -> None:
    with browser() as chromium:
        page = watched_page(chromium, xss_server.base_url)
        page.goto(xss_server.base_url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        for operation in ("#operations-judge-judge_invoke", "#operations-qa-qa_invoke"):
            page.locator(f"{operation} .opblock-summary").click()
            page.locator(f"{operation} .tablinks[data-name='model']").first.click()
            # OpenAPI 3.1 schemas: "Expand all" on the request's inputs shows their fields.
            inputs = page.locator(f"{operation} .json-schema-2020-12-property").filter(
                has=page.locator(".json-schema-2020-12__title", has_text="inputs")
            )
            inputs.locator(".json-schema-2020-12-expand-deep-button").first.click()
        assert_rendered_and_never_ran(page, rendered_text(page, "#swagger-ui"))


def watched_page(chromium: Any, base_url: str) -> Any:
    """An offline page that records what its Content-Security-Policy blocked."""
    page = offline_page(chromium, base_url)
    page.add_init_script(
        "window.blocked = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.blocked.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    return page


def rendered_text(page: Any, selector: str) -> str:
    """The element's text once every payload's marker shows (expanded fields render a moment
    after their click), or as it is after 10 s, for the assertion to name what is missing."""
    markers = [f"Marker {where} here." for where in WHERE]
    check = "([sel, marks]) => { const el = document.querySelector(sel); "
    check += "return !!el && marks.every((m) => el.innerText.includes(m)); }"
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(check, arg=[selector, markers], timeout=10_000)
    return str(page.locator(selector).inner_text())


def assert_rendered_and_never_ran(page: Any, shown: str) -> None:
    missing = [where for where in WHERE if f"Marker {where} here." not in shown]
    assert not missing, f"not rendered: {missing}"
    page.wait_for_timeout(1_000)  # the missing images' errors fire
    ran = sorted(set(page.evaluate("window.ran || []")))
    assert ran == [], f"program text ran as script from: {ran}"
    # The sanitiser removed the handlers (the policy is the second line of defence), and the
    # policy blocks nothing the page itself needs.
    # The policy blocks nothing the page needs: its scripts, worker, styles, fonts, requests.
    # (The handlers the sanitiser strips may still be reported as blocked, and so is ReDoc's
    # logo, which it loads from its CDN.)
    needed = ("script-src-elem", "worker-src", "style-src", "font-src", "connect-src")
    blocked = [entry for entry in page.evaluate("window.blocked") if entry.startswith(needed)]
    assert blocked == [], blocked


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect", "/"])
def test_the_docs_pages_send_a_content_security_policy(xss_server: ServerThread, path: str) -> None:
    """No inline script or event handler runs (the OAuth2 redirect page's own script is allowed by
    its hash), and no other site may frame the page."""
    headers = httpx.get(xss_server.base_url + path, timeout=10).headers
    policy = dict(d.strip().partition(" ")[::2] for d in headers["content-security-policy"].split(";"))
    scripts = policy["script-src"].split()
    assert scripts == ["'self'"] or all(source.startswith("'sha256-") for source in scripts), scripts
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_api_docs_say_where_v1_and_mcp_are_described(server: ServerThread) -> None:
    description = httpx.get(server.base_url + "/openapi.json", timeout=10).json()["info"]["description"]
    assert "/v1/chat/completions" in description and "docs/openai.md" in description
    assert "/mcp" in description and "docs/mcp.md" in description
