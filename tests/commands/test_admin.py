"""``dspy-serve admin`` over real HTTP, against a uvicorn server on 127.0.0.1 that answers as the
admin API's contract says: each subcommand's method, path and body, the admin key from the
environment, the rollout printed with its pointers, and the server's errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dspy_serve.cli import main
from dspy_serve.commands.admin import render_rollout
from tests.support.servers import ServerThread

KEY = "admin-secret"

ROLLOUT: dict[str, Any] = {
    "program": "qa",
    "stable": "v1",
    "candidate": "v2",
    "previous": ["v0"],
    "split": None,
    "shadow": None,
    "revision": 3,
    "versions": [
        {"name": "v0", "sha256": "0" * 64, "loaded_at": 1796600000.0, "state": "retired",
         "artifact": "qa-v0.json", "provenance": None},
        {"name": "v1", "sha256": "a1" * 32, "loaded_at": 1796610000.0, "state": "stable",
         "artifact": "qa-v1.json", "provenance": "qa-v1.provenance.json"},
        {"name": "v2", "sha256": "b2" * 32, "loaded_at": 1796620000.0, "state": "candidate",
         "artifact": "qa-v2.json", "provenance": None},
    ],
}  # fmt: skip


def problem(status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "title": code, "code": code, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def admin_app(seen: list[dict[str, Any]]) -> Starlette:
    """The admin API as the contract says it answers (the real routes are tested by the server's
    own tests); it records what each command sent."""
    state = copy.deepcopy(ROLLOUT)

    async def route(request: Request) -> JSONResponse:
        raw = await request.body()
        body = json.loads(raw) if raw else None
        action = request.url.path.rsplit("/", 1)[-1] if request.url.path.count("/") > 3 else "show"
        seen.append({"method": request.method, "path": request.url.path, "body": body, "action": action})
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return problem(401, "unauthorized", "Missing or unknown admin key")
        name = request.path_params["name"]
        if name == "off":
            return problem(404, "http_error", "Not Found")
        if name != "qa":
            return problem(404, "program_not_found", f"No program named {name!r}")
        if action == "versions":
            if body["artifact"].startswith("/"):
                detail = "artifact: outside the artifact directory"
                return problem(422, "invalid_input", detail, [{"loc": ["body", "artifact"], "msg": detail}])
            version = {"name": body["name"], "sha256": "c3" * 32, "loaded_at": 1796630000.0,
                       "state": "loaded", "artifact": body["artifact"], "provenance": None}  # fmt: skip
            return JSONResponse(version, status_code=201)
        if action == "promote":
            state.update(stable=body["version"], candidate=None, previous=["v1", "v0"], split=None)
        elif action == "rollback":
            state.update(candidate=None, split=None, shadow=None)
        elif action in ("split", "shadow"):
            state[action] = body
        state["revision"] += 1
        return JSONResponse(state)

    paths = ["/admin/programs/{name}", *(f"/admin/programs/{{name}}/{a}" for a in ("promote", "rollback"))]
    paths += [
        "/admin/programs/{name}/versions",
        "/admin/programs/{name}/split",
        "/admin/programs/{name}/shadow",
    ]
    return Starlette(routes=[Route(path, route, methods=["GET", "POST", "PUT"]) for path in paths])


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    thread = ServerThread(admin_app(seen)).start()
    try:
        yield thread.base_url, seen
    finally:
        thread.stop()


def admin(*args: str, key: str | None = KEY) -> Any:
    env = {"COLUMNS": "200", "DSPY_SERVE_ADMIN_KEY": key}
    return CliRunner(env=env).invoke(main, ["admin", *args], catch_exceptions=False)


def test_show_prints_the_versions_with_their_pointers(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = server
    result = admin(url, "show", "qa")
    assert result.exit_code == 0, result.output
    assert seen[-1] == {"method": "GET", "path": "/admin/programs/qa", "body": None, "action": "show"}
    lines = result.output.splitlines()
    assert lines[0].startswith("qa: stable v1, candidate v2, previous v0 (revision")
    v1 = next(line for line in lines if line.startswith("v1"))
    assert "stable" in v1 and "a1a1a1a1a1a1 " in v1 and "qa-v1.json (provenance qa-v1.provenance.json)" in v1
    assert "2026-12-07 02:20:00Z" in v1  # loaded_at, as a UTC time
    assert "previous" in next(line for line in lines if line.startswith("v0"))


@pytest.mark.parametrize(
    ("args", "method", "action", "body"),
    [
        (["promote", "qa", "v2"], "POST", "promote", {"version": "v2"}),
        (["rollback", "qa"], "POST", "rollback", None),
        (["split", "qa", "v2", "10"], "PUT", "split", {"candidate": "v2", "weight": 10.0, "sticky": "key"}),
        (
            ["split", "qa", "v2", "50", "--sticky", "header:X-User"],
            "PUT",
            "split",
            {"candidate": "v2", "weight": 50.0, "sticky": "header:X-User"},
        ),
        (["shadow", "qa", "v2", "0.2"], "PUT", "shadow", {"candidate": "v2", "rate": 0.2}),
    ],
)
def test_each_change_sends_its_body_and_prints_the_rollout(
    server: tuple[str, list[dict[str, Any]]], args: list[str], method: str, action: str, body: Any
) -> None:
    url, seen = server
    result = admin(url, *args)
    assert result.exit_code == 0, result.output
    assert (seen[-1]["method"], seen[-1]["action"], seen[-1]["body"]) == (method, action, body)
    assert result.output.startswith("qa: stable")


def test_split_and_shadow_lines_say_what_runs_where(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = server
    admin(url, "split", "qa", "v2", "10", "--sticky", "input:user_id")
    output = admin(url, "shadow", "qa", "v2", "0.25").output
    assert "split: 10 % of calls to v2, sticky by input:user_id" in output
    assert "shadow: v2 also runs on 25 % of calls" in output
    assert "candidate, split, shadow" in next(line for line in output.splitlines() if line.startswith("v2"))


def test_load_names_the_version_and_json_prints_the_answer(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = server
    result = admin(url, "load", "qa", "v3", "qa-v3.json")
    assert result.exit_code == 0, result.output
    assert seen[-1]["body"] == {"name": "v3", "artifact": "qa-v3.json"}
    assert result.output.strip() == "loaded v3 (sha256 c3c3c3c3c3c3) from qa-v3.json"
    raw = admin(url, "show", "qa", "--json")
    assert raw.exit_code == 0, raw.output
    assert json.loads(raw.output)["program"] == "qa"


def test_a_refusal_prints_status_code_detail_and_fields(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = server
    result = admin(url, "load", "qa", "v3", "/etc/passwd")
    assert result.exit_code == 1
    assert "dspy-serve: 422 invalid_input: artifact: outside the artifact directory" in result.output
    assert "  artifact: artifact: outside the artifact directory" in result.output  # its field error
    unknown = admin(url, "show", "kitchen")
    assert unknown.exit_code == 1 and "404 program_not_found: No program named 'kitchen'" in unknown.output


def test_the_admin_key_comes_from_the_environment_and_an_off_api_says_so(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = server
    missing = admin(url, "show", "qa", key=None)
    assert missing.exit_code == 1 and "set DSPY_SERVE_ADMIN_KEY" in missing.output
    assert "it is not set" in missing.output
    assert "it was refused" in admin(url, "show", "qa", key="guess").output
    off = admin(url, "show", "off")
    assert off.exit_code == 1 and "is the admin API on?" in off.output


def test_no_server_and_bad_arguments() -> None:
    closed = admin("127.0.0.1:9", "show", "qa")
    assert closed.exit_code == 1 and "cannot reach http://127.0.0.1:9" in closed.output
    assert admin("127.0.0.1:9", "split", "qa", "v2", "10", "--sticky", "cookie").exit_code == 2
    assert admin("127.0.0.1:9", "split", "qa", "v2", "150").exit_code == 2
    assert admin("127.0.0.1:9", "shadow", "qa", "v2", "2").exit_code == 2


def test_a_rollout_renders_with_no_split_or_shadow_and_server_text_stays_inert() -> None:
    out = StringIO()
    rollout = {
        **ROLLOUT,
        "candidate": None,
        "versions": [{**ROLLOUT["versions"][1], "artifact": "\x1b]0;pwned\x07"}],
    }
    render_rollout(rollout, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert text.startswith("qa: stable v1, candidate -, previous v0 (revision 3)")
    assert "split:" not in text and "shadow:" not in text
    assert "\x1b]0;" not in text and "\\x1b]0;pwned\\x07" in text
