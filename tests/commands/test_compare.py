"""``dspy-serve compare`` over real HTTP: a uvicorn server on 127.0.0.1 whose compare route serves
the report of a real SQLite store (as the admin API does), one program per verdict; the exit code
is the verdict, the admin key comes from the environment, errors say what went wrong."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
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
from dspy_serve.commands.compare import render_report
from dspy_serve.compare.report import compare_report
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from dspy_serve.store.calls import insert_calls
from dspy_serve.store.feedback import upsert_feedback
from tests.support.servers import ServerThread
from tests.support.stores import call_row

KEY = "admin-secret"
# program: (v1 passed, v1 failed, v2 passed, v2 failed)
PROGRAMS = {
    "better": (30, 30, 45, 5),
    "worse": (45, 15, 20, 30),
    "even": (24, 16, 26, 14),
    "quiet": (2, 8, 5, 0),
}


async def fill(store: Store) -> None:
    now = time.time() - 60
    for program, (p1, f1, p2, f2) in PROGRAMS.items():
        for version, passed, failed in (("v1", p1, f1), ("v2", p2, f2)):
            rows = [
                call_row(
                    f"{program}-{version}-{i}",
                    program=program,
                    version=f"sha-{version}",
                    version_name=version,
                    shadow_of=None,
                    created_at=now,
                )
                for i in range(passed + failed)
            ]
            await insert_calls(store, rows)
            for i, row in enumerate(rows):
                score = float(i < passed)
                await upsert_feedback(store, str(row["call_id"]), "", score=score, outputs=None, comment=None)


def problem(status: int, code: str, detail: str) -> JSONResponse:
    body = {"status": status, "title": code, "code": code, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def compare_app(url: str, seen: list[dict[str, str]]) -> Starlette:
    """The admin API's compare route, as the server answers it, over a real store."""
    stores: list[Store] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        stores.append(await Store.open(url))
        yield
        await stores[0].close()

    async def compare(request: Request) -> JSONResponse:
        seen.append(dict(request.query_params))
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return problem(401, "unauthorized", "Missing or unknown admin key")
        name = request.path_params["name"]
        if name not in PROGRAMS:
            return problem(404, "program_not_found", f"No program named {name!r}")
        query = request.query_params
        report = await compare_report(
            stores[0],
            name,
            since=time.time() - float(query["since"]),
            min_sample=int(query.get("min_sample", 30)),
            stable=query.get("stable"),
            candidate=query.get("candidate"),
        )
        return JSONResponse(report)

    return Starlette(routes=[Route("/admin/programs/{name}/compare", compare)], lifespan=lifespan)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[dict[str, str]]]]:
    url = store_url(ServeSettings(store=f"sqlite:///{tmp_path_factory.mktemp('compare') / 'store.db'}"))

    async def prepare() -> None:
        store = await Store.open(url)
        try:
            await fill(store)
        finally:
            await store.close()

    asyncio.run(prepare())
    seen: list[dict[str, str]] = []
    thread = ServerThread(compare_app(url, seen)).start()
    try:
        yield thread.base_url, seen
    finally:
        thread.stop()


def compare(*args: str, key: str | None = KEY) -> Any:
    env = {"COLUMNS": "200", "DSPY_SERVE_ADMIN_KEY": key}
    return CliRunner(env=env).invoke(main, ["compare", *args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("program", "verdict", "code"),
    [
        ("better", "better", 0),
        ("worse", "worse", 1),
        ("even", "inconclusive", 4),
        ("quiet", "insufficient_data", 5),
    ],
)
def test_the_exit_code_is_the_verdict(
    server: tuple[str, list[dict[str, str]]], program: str, verdict: str, code: int
) -> None:
    url, _ = server
    result = compare(url, program, "--since", "1h")
    assert result.exit_code == code, result.output
    assert f"verdict: {verdict}:" in result.output
    assert f"{program}: v2 (candidate) against v1 (stable), last 1h" in result.output


def test_the_window_sample_and_sides_go_to_the_server(server: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = server
    result = compare(url.removeprefix("http://"), "quiet", "--since", "2d", "--min-sample", "5", "--json")
    assert result.exit_code == 0, result.output  # with 5 a side, 2 of 10 against 5 of 5 decides
    assert seen[-1] == {"since": "172800", "min_sample": "5"}
    report = json.loads(result.output)
    assert (report["verdict"], report["min_sample"], report["stable"]) == ("better", 5, "v1")
    swapped = compare(url, "better", "--stable", "v2", "--candidate", "v1")
    assert swapped.exit_code == 1 and seen[-1] == {"since": "3600", "stable": "v2", "candidate": "v1"}


def test_the_admin_key_comes_from_the_environment(server: tuple[str, list[dict[str, str]]]) -> None:
    url, _ = server
    missing = compare(url, "better", key=None)
    assert missing.exit_code == 3
    assert "401 unauthorized" in missing.output and "DSPY_SERVE_ADMIN_KEY" in missing.output
    assert "it is not set" in missing.output
    assert "it was refused" in compare(url, "better", key="wrong").output


def test_a_server_error_or_no_server_is_exit_3(server: tuple[str, list[dict[str, str]]]) -> None:
    url, _ = server
    unknown = compare(url, "nope")
    assert unknown.exit_code == 3 and "404 program_not_found: No program named 'nope'" in unknown.output
    closed = compare("http://127.0.0.1:9", "better")
    assert closed.exit_code == 3 and "cannot reach http://127.0.0.1:9" in closed.output


def test_a_bad_window_is_a_usage_error() -> None:
    assert compare("http://127.0.0.1:9", "qa", "--since", "soon").exit_code == 2
    assert compare("http://127.0.0.1:9", "qa", "--min-sample", "0").exit_code == 2


def render(report: dict[str, Any], since: str | None = None) -> str:
    out = StringIO()
    render_report(report, Console(file=out, width=200, highlight=False), since)
    return out.getvalue()


REPORT: dict[str, Any] = {
    "program": "qa",
    "stable": "v1",
    "candidate": "v2",
    "min_sample": 30,
    "versions": [
        {
            "name": "v1",
            "calls": 120,
            "errors": 3,
            "error_rate": 0.025,
            "latency_ms": {"p50": 210.4, "p90": 480.0, "p99": 1210.0},
            "tokens": 14400,
            "cost_usd": 0.0123,
            "shadow_calls": 0,
            "shadow_cost_usd": None,
            "feedback": {"n": 60, "mean": 0.7, "ci": [0.57, 0.8], "binary": True},
        },
        {
            "name": "v2",
            "calls": 0,
            "errors": 0,
            "error_rate": None,
            "latency_ms": None,
            "tokens": 0,
            "cost_usd": None,
            "shadow_calls": 40,
            "shadow_errors": 2,
            "shadow_latency_ms": {"p50": 250.0, "p90": 600.0, "p99": 1500.0},
            "shadow_tokens": 5000,
            "shadow_cost_usd": 0.004,
            "feedback": {"n": 0, "mean": None, "ci": None, "binary": True},
        },
    ],
    "paired": {
        "pairs": 40,
        "labelled": 36,
        "stable_pass": 26,
        "candidate_pass": 34,
        "b": 1,
        "c": 9,
        "p_value": 0.021484375,
        "method": "exact",
        "mean_diff": 0.22,
        "ci": [0.08, 0.36],
    },
    "split": None,
    "verdict": "better",
    "reason": "on 36 labelled shadow pairs v2 passed 34 and v1 26",
}


def test_the_report_renders_per_version_then_pairs_then_verdict() -> None:
    text = render(REPORT, "24h")
    lines = text.splitlines()
    assert lines[0] == "qa: v2 (candidate) against v1 (stable), last 24h"
    v1 = next(line for line in lines if line.startswith("v1"))
    for cell in (
        "stable",
        "120",
        "3 (2.5 %)",
        "210 / 480 / 1210",
        "14400",
        "0.0123",
        "0.700 [0.570, 0.800] n=60",
    ):
        assert cell in v1
    v2 = next(line for line in lines if line.startswith("v2"))
    # A version that only runs in shadow shows its runs, errors, latency, tokens and cost apart.
    for cell in ("candidate shadow", "40", "2 (5.0 %)", "250 / 600 / 1500", "5000", "0.0040"):
        assert cell in v2
    assert "shadow pairs: 40, 36 labelled by feedback; v2 passed 34, v1 26" in text
    assert "McNemar p = 0.0215 (exact: 9 only v2, 1 only v1)" in text
    assert lines[-1] == "verdict: better: on 36 labelled shadow pairs v2 passed 34 and v1 26"


def test_a_split_renders_its_difference_and_text_from_the_server_stays_inert() -> None:
    report = {
        **REPORT,
        "paired": None,
        "split": {"stable_n": 60, "candidate_n": 45, "diff": -0.1, "ci": [-0.3, 0.1], "method": "newcombe"},
        "verdict": "inconclusive",
        "reason": "includes 0 \x1b[2J[red]boom[/red]",
    }
    text = render(report, "2026-12-01")
    assert "since 2026-12-01" in text.splitlines()[0]
    assert "feedback: v2 minus v1 = -0.100 [-0.300, +0.100] (newcombe, 45 and 60 scored calls)" in text
    # An escape sequence is shown, not run; rich markup is printed as written.
    assert "\x1b[2J" not in text and "\\x1b[2J[red]boom[/red]" in text


def test_an_answer_that_is_not_a_report_is_exit_3() -> None:
    app = Starlette(routes=[Route("/admin/programs/{name}/compare", lambda _: JSONResponse({"hello": 1}))])
    thread = ServerThread(app).start()
    try:
        result = compare(thread.base_url, "qa")
    finally:
        thread.stop()
    assert result.exit_code == 3 and "not a comparison report" in result.output
