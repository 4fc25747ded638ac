"""API keys, per-key restrictions, CORS and request limits (in-process, DummyLM)."""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dspy.utils import DummyLM
from starlette.routing import BaseRoute

import dspy_serve.serving.keys
from dspy_serve import ServeSettings, create_app
from dspy_serve.logs import JsonFormatter, TextFormatter
from dspy_serve.serving.keys import KeyRing, parse_key_line
from dspy_serve.serving.loader import RESERVED_NAMES, TargetError, parse_target

SECRET = "sk-serve-TOPSECRET-1"
OTHER = "sk-serve-TOPSECRET-2"


async def client_for(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    lm = DummyLM([{"answer": "ok"}] * 50)
    programs = {"qa": "question -> answer", "other": "question -> answer"}
    app = create_app(ServeSettings(**settings), programs=programs, lm=lm)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\nweb:{SECRET}\nlimited:{OTHER} programs=qa models=none-extra\n")
    async for http in client_for(api_keys_file=keys):
        yield http


ASK = {"inputs": {"question": "q"}}


async def test_no_key_or_a_wrong_key_is_401(secured: httpx.AsyncClient) -> None:
    missing = await secured.post("/qa/invoke", json=ASK)
    wrong = await secured.post("/qa/invoke", json=ASK, headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"
        assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_a_right_key_works_as_bearer_or_x_api_key(secured: httpx.AsyncClient) -> None:
    bearer = await secured.post("/qa/invoke", json=ASK, headers={"Authorization": f"Bearer {SECRET}"})
    header = await secured.post("/qa/invoke", json=ASK, headers={"X-API-Key": SECRET})
    assert bearer.status_code == header.status_code == 200


async def test_health_and_docs_stay_open_by_default(secured: httpx.AsyncClient) -> None:
    for path in ("/health/live", "/health/ready", "/openapi.json", "/docs"):
        assert (await secured.get(path)).status_code == 200, path


async def test_docs_can_require_a_key() -> None:
    async for http in client_for(api_keys=[SECRET], protect_docs=True):
        assert (await http.get("/openapi.json")).status_code == 401
        assert (await http.get("/openapi.json", headers={"X-API-Key": SECRET})).status_code == 200
        assert (await http.get("/health/ready")).status_code == 200


async def test_a_key_may_be_limited_to_programs_and_models(secured: httpx.AsyncClient) -> None:
    headers = {"X-API-Key": OTHER}
    no_model = await secured.post("/qa/invoke", json=ASK, headers=headers)
    other_program = await secured.post("/other/invoke", json=ASK, headers=headers)
    other_model = await secured.post(
        "/qa/invoke", json={**ASK, "options": {"model": "dummy"}}, headers=headers
    )
    # Its only model is not served: a call that names none is refused, not run on the default (#22).
    assert no_model.status_code == 403 and no_model.json()["code"] == "model_not_allowed"
    # A program outside the key's list is one that does not exist (#22).
    assert other_program.status_code == 404 and other_program.json()["code"] == "program_not_found"
    assert other_model.status_code == 403 and other_model.json()["code"] == "model_not_allowed"


def _as_missing(response: httpx.Response, name: str) -> tuple[int, str, str, str]:
    """What a caller can tell of a program from a response, with its own name taken out."""
    body = response.json()
    detail = body.get("detail") or body.get("error", {}).get("message", "")
    code = body.get("code") or body.get("error", {}).get("code", "")
    return response.status_code, response.headers["content-type"], code, detail.replace(repr(name), "NAME")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/{name}/invoke", {"inputs": {}}),
        ("POST", "/{name}/invoke", b"{not json"),
        ("POST", "/{name}/stream", {"inputs": {}}),
        ("POST", "/{name}/batch", {"items": [{}]}),
        ("GET", "/{name}/invoke", None),
        ("GET", "/programs/{name}", None),
        ("GET", "/v1/models/{name}", None),
        ("POST", "/v1/chat/completions", {"model": "{name}", "messages": [{"role": "user", "content": "q"}]}),
        ("POST", "/v1/chat/completions", {"model": "{name}", "messages": []}),
    ],
)
async def test_a_program_outside_the_key_is_one_that_does_not_exist(
    secured: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    """#22: on every wire, before the body is looked at, and naming only what the key may call."""
    answers = []
    for name in ("other", "nope"):
        url = path.format(name=name)
        content = body if isinstance(body, bytes) else json.dumps(body).replace("{name}", name).encode()
        response = await secured.request(
            method,
            url,
            content=content if body is not None else None,
            headers={"X-API-Key": OTHER, "Content-Type": "application/json"},
        )
        answers.append(_as_missing(response, name))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404 and "it serves: qa" in answers[0][3] and "other" not in answers[0][3]


async def test_anonymous_readiness_tells_only_ready(secured: httpx.AsyncClient) -> None:
    anonymous = await secured.get("/health/ready")
    limited = await secured.get("/health/ready", headers={"X-API-Key": OTHER})
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    assert limited.status_code == 200 and set(limited.json()["programs"]) == {"qa"}


async def test_keys_are_compared_in_constant_time(
    secured: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(dspy_serve.serving.keys.hmac, "compare_digest", spy)
    await secured.post("/qa/invoke", json=ASK, headers={"X-API-Key": SECRET})
    assert len(calls) == 2, "every configured key is compared, whichever matches"


def test_key_lines_parse_names_and_restrictions() -> None:
    named = parse_key_line("ci:abc programs=a,b models=m", 1)
    bare = parse_key_line("xyz", 2)
    assert (named.name, named.programs, named.models) == ("ci", frozenset({"a", "b"}), ("m",))
    assert (bare.name, bare.programs, bare.models) == ("key-2", None, None)
    with pytest.raises(ValueError, match="unknown option"):
        parse_key_line("k rate=5", 3)
    ring = KeyRing([named, bare])
    assert ring.match("abc") is named and ring.match("xyz") is bare and ring.match("nope") is None


async def test_no_key_appears_in_any_response(secured: httpx.AsyncClient) -> None:
    headers = {"X-API-Key": SECRET}
    texts = [
        (await secured.get("/programs", headers=headers)).text,
        (await secured.get("/openapi.json")).text,
        (await secured.post("/qa/invoke", json=ASK, headers=headers)).text,
        (await secured.post("/qa/invoke", json=ASK, headers={"X-API-Key": SECRET + "x"})).text,
    ]
    assert not any(SECRET in text for text in texts)


async def test_cors_is_closed_by_default_and_opens_per_origin() -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async for http in client_for():
        closed = await http.options("/qa/invoke", headers=preflight)
        assert "access-control-allow-origin" not in closed.headers
    async for http in client_for(cors_origins=["https://app.example"], api_keys=[SECRET]):
        opened = await http.options("/qa/invoke", headers=preflight)
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == "https://app.example"


async def test_request_size_limits() -> None:
    async for http in client_for(max_body_bytes=2_000, max_input_chars=100, batch_max_items=3):
        too_big = await http.post("/qa/invoke", json={"inputs": {"question": "x" * 5_000}})

        async def chunked() -> AsyncIterator[bytes]:
            for chunk in (b'{"inputs": {"question": "', b"x" * 3_000, b'"}}'):
                yield chunk

        streamed = await http.post(
            "/qa/invoke", content=chunked(), headers={"Content-Type": "application/json"}
        )
        too_long = await http.post("/qa/invoke", json={"inputs": {"question": "x" * 101}})
        too_many = await http.post("/qa/batch", json={"items": [{"question": "q"}] * 4})
        just_right = await http.post("/qa/invoke", json={"inputs": {"question": "x" * 100}})
    for refused in (too_big, streamed):
        assert refused.status_code == 413
        assert refused.headers["content-type"] == "application/problem+json"
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["loc"] == ["body", "inputs", "question"]
    assert too_many.status_code == 422
    assert just_right.status_code == 200


async def test_only_the_exact_open_paths_skip_the_key() -> None:
    """A program named like an open route (docs_qa, metrics_report, redocs, healthy) gets no free pass."""
    lm = DummyLM([{"answer": "ok"}] * 10)
    programs = {name: "question -> answer" for name in ("docs_qa", "metrics_report", "redocs", "healthy")}
    for protect_docs in (False, True):
        app = create_app(
            ServeSettings(api_keys=[SECRET], protect_docs=protect_docs), programs=programs, lm=lm
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
        ):
            for name in programs:
                response = await http.post(f"/{name}/invoke", json=ASK)
                assert response.status_code == 401, (name, response.text)
            for path in ("/health/livex", "/health/ready/", "/docsx", "/openapi.jsonx", "/metrics/x"):
                assert (await http.get(path)).status_code == 401, path
            for path in ("/health/live", "/health/ready"):
                assert (await http.get(path)).status_code == 200, path
            docs = [await http.get(path) for path in ("/docs", "/docs/oauth2-redirect", "/redoc", "/metrics")]
            assert [r.status_code for r in docs] == [401 if protect_docs else 200] * 4


@pytest.mark.parametrize(
    "name", ["health", "docs", "metrics", "v1", "mcp", "programs", "redoc", "playground"]
)
def test_a_program_named_like_a_reserved_route_is_refused(name: str) -> None:
    with pytest.raises(TargetError, match="reserved"):
        create_app(ServeSettings(), programs={name: "question -> answer"}, lm=DummyLM([]))
    with pytest.raises(TargetError, match="reserved"):
        parse_target(f"{name}=examples/qa.py:program")


def test_reserved_names_cover_every_route_of_the_app() -> None:
    app = create_app(ServeSettings(), programs={"qa": "question -> answer"}, lm=DummyLM([]))
    paths = [getattr(route, "path", None) for route in _every_route(app.routes)]
    firsts = {path.strip("/").split("/")[0] for path in paths if path}
    firsts -= {"qa", "{name}", ""}  # "": the landing page, "/", which no program name can take
    assert firsts <= RESERVED_NAMES, firsts - RESERVED_NAMES


def _every_route(routes: list[BaseRoute]) -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for route in routes:
        found.append(route)
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        found += _every_route(inner) if inner else []
    return found


async def test_control_characters_in_the_path_cannot_forge_log_lines() -> None:
    """A percent-encoded CR, LF or ESC (or a C1 control) in the path, sent with no key, stays one
    escaped log line in both formats."""
    text, lines = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(lines)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    access = logging.getLogger("dspy_serve.access")
    for handler in handlers:
        access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        async for http in client_for(api_keys=[SECRET]):
            forged = "/qa%0d%0a2026-01-01 INFO dspy_serve.access: POST /qa/invoke 200%1b[2K%c2%9b"
            assert (await http.post(forged + "/invoke", json=ASK)).status_code == 401
    finally:
        for handler in handlers:
            access.removeHandler(handler)
    assert text.getvalue().count("\n") == 1 and "\r" not in text.getvalue()
    assert "\x1b" not in text.getvalue() and "\x9b" not in text.getvalue()
    assert "\\x0d\\x0a2026-01-01 INFO" in text.getvalue() and "\\x1b[2K" in text.getvalue()
    assert lines.getvalue().count("\n") == 1 and "\x9b" not in lines.getvalue()
    entry = json.loads(lines.getvalue())
    assert entry["message"].startswith("POST /qa\r\n2026-01-01") and "\x1b[2K\x9b" in entry["message"]


NOT_JSON = [
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "multipart/form-data; boundary=x"},
    {},  # an untyped body (a Blob without a type): FastAPI would parse it as JSON
]


async def test_program_routes_and_v1_take_json_only() -> None:
    """What a web page can post cross-site without a preflight runs nothing (auth is off by default)."""
    chat = {"model": "qa", "messages": [{"role": "user", "content": "q"}]}
    async for http in client_for():
        for headers in NOT_JSON:
            for path, body in [(f"/qa/{ep}", ASK) for ep in ("invoke", "stream")] + [
                ("/v1/chat/completions", chat)
            ]:
                response = await http.post(path, content=json.dumps(body), headers=headers)
                assert response.status_code == 415, (path, headers, response.text)
                if path.startswith("/v1"):
                    assert response.json()["error"]["code"] == "unsupported_media_type"
                else:
                    assert response.json()["code"] == "unsupported_media_type"
            batch = await http.post(
                "/qa/batch", content=json.dumps({"items": [ASK["inputs"]]}), headers=headers
            )
            assert batch.status_code == 415
        for media_type in ("application/json", "application/json; charset=utf-8", "application/vnd.qa+json"):
            headers = {"Content-Type": media_type}
            assert (
                await http.post("/qa/invoke", content=json.dumps(ASK), headers=headers)
            ).status_code == 200
            assert (
                await http.post("/v1/chat/completions", content=json.dumps(chat), headers=headers)
            ).status_code == 200


async def test_mcp_takes_json_only() -> None:
    pytest.importorskip("mcp")
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "qa", "arguments": {"question": "q"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async for http in client_for():
        for headers in NOT_JSON:
            response = await http.post("/mcp", content=json.dumps(call), headers={**accept, **headers})
            assert response.status_code == 415, (headers, response.text)
        ok = await http.post(
            "/mcp", content=json.dumps(call), headers={**accept, "Content-Type": "application/json"}
        )
        assert ok.status_code == 200, ok.text
        assert '"result"' in ok.text and '"isError":true' not in ok.text.replace(" ", ""), ok.text


async def test_a_restricted_key_sees_only_its_programs(secured: httpx.AsyncClient) -> None:
    limited, full = {"X-API-Key": OTHER}, {"X-API-Key": SECRET}
    listed = (await secured.get("/programs", headers=limited)).json()
    assert [p["name"] for p in listed] == ["qa"]
    assert (await secured.get("/programs/other", headers=limited)).status_code == 404
    assert (await secured.get("/programs/qa", headers=limited)).status_code == 200
    document = (await secured.get("/openapi.json", headers=limited)).json()
    assert not any(path.startswith("/other/") for path in document["paths"])
    assert "/qa/invoke" in document["paths"]
    assert not any(name.startswith("Other") for name in document["components"]["schemas"])
    assert "QaInputs" in document["components"]["schemas"]
    everything = (await secured.get("/openapi.json", headers=full)).json()
    assert "/other/invoke" in everything["paths"] and "OtherInputs" in everything["components"]["schemas"]
    assert len((await secured.get("/programs", headers=full)).json()) == 2


async def test_openapi_declares_the_key_schemes_on_protected_operations(secured: httpx.AsyncClient) -> None:
    document = (await secured.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer KEY",
    }
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, item in document["paths"].items():
        for operation in item.values():
            if path in ("/health/live", "/health/ready", "/metrics"):
                assert "security" not in operation, path
            else:
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}], path
                assert "401" in operation["responses"], path
    async for http in client_for():
        assert "securitySchemes" not in (await http.get("/openapi.json")).json().get("components", {})
    async for http in client_for(api_keys=[SECRET], protect_docs=True):
        protected = (await http.get("/openapi.json", headers={"X-API-Key": SECRET})).json()
        assert protected["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}, {"apiKey": []}]
        assert "security" not in protected["paths"]["/health/ready"]["get"]
