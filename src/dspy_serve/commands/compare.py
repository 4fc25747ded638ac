"""``dspy-serve compare URL NAME``: how program NAME's versions did over a recent window, and the
verdict, from the server's admin API (#27).

The exit code is the verdict, so a script or a CI step can act on it:

====  ===========================================
0     better: the candidate beat the stable version
1     worse
2     a usage error (click's own)
3     the server could not be reached, or refused
4     inconclusive
5     insufficient_data
====  ===========================================
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import click

from dspy_serve.commands.admin import AdminFailure, admin_request, console, program_path, safe_text
from dspy_serve.commands.common import parse_since

__all__ = ["EXIT_CODES", "compare_command", "render_report"]

EXIT_CODES = {"better": 0, "worse": 1, "inconclusive": 4, "insufficient_data": 5}
EXIT_UNREACHABLE = 3

_STYLE = {"better": "bold green", "worse": "bold red", "inconclusive": "bold yellow"}


def _ms(latency: Mapping[str, float] | None) -> str:
    if not latency:
        return "-"
    return " / ".join(f"{latency[q]:.0f}" for q in ("p50", "p90", "p99"))


def _cost(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _feedback(score: Mapping[str, Any]) -> str:
    if not score.get("n"):
        return "-"
    low, high = score["ci"]
    return f"{score['mean']:.3f} [{low:.3f}, {high:.3f}] n={score['n']}"


def _errors(errors: int, calls: int) -> str:
    return f"{errors} ({100 * errors / calls:.1f} %)" if calls else "-"


def _rows(version: Mapping[str, Any], role: str) -> list[tuple[str, ...]]:
    """A version's served calls, then its shadow runs (answers recorded, never returned) apart."""
    rows: list[tuple[str, ...]] = []
    if version.get("calls") or not version.get("shadow_calls"):
        rows.append(
            (
                str(version.get("name")),
                role,
                str(version.get("calls", 0)),
                _errors(version.get("errors", 0), version.get("calls", 0)),
                _ms(version.get("latency_ms")),
                str(version.get("tokens", 0)),
                _cost(version.get("cost_usd")),
                _feedback(version.get("feedback") or {}),
            )
        )
    if version.get("shadow_calls"):
        rows.append(
            (
                str(version.get("name")),
                f"{role} shadow".strip(),
                str(version["shadow_calls"]),
                _errors(version.get("shadow_errors", 0), version["shadow_calls"]),
                _ms(version.get("shadow_latency_ms")),
                str(version.get("shadow_tokens", 0)),
                _cost(version.get("shadow_cost_usd")),
                "-",
            )
        )
    return rows


def render_report(report: Mapping[str, Any], console: Any, since: str | None = None) -> None:
    """A table of the versions, then the paired and split comparisons, then the verdict."""
    from rich.table import Table
    from rich.text import Text

    stable, candidate = report.get("stable"), report.get("candidate")
    window = "" if not since else f", last {since}" if since[-1:] in "smhdw" else f", since {since}"
    title = f"{report['program']}: {candidate or '-'} (candidate) against {stable or '-'} (stable)"
    console.print(Text(safe_text(title + window)))
    table = Table(show_edge=False, pad_edge=False)
    columns = ("version", "", "calls", "errors", "p50/p90/p99 ms", "tokens", "cost $", "feedback [95 % CI]")
    for column in columns:
        table.add_column(column, justify="left" if column in ("version", "") else "right")
    for version in report.get("versions") or []:
        name = version.get("name")
        role = "stable" if name == stable else "candidate" if name == candidate else ""
        for cells in _rows(version, role):
            table.add_row(*(Text(safe_text(cell)) for cell in cells))
    console.print(table)
    paired = report.get("paired")
    if paired and paired.get("pairs"):
        line = f"shadow pairs: {paired['pairs']}, {paired['labelled']} labelled by feedback"
        if paired.get("labelled"):
            low, high = paired["ci"]
            line += (
                f"; {candidate} passed {paired['candidate_pass']}, {stable} {paired['stable_pass']}; "
                f"McNemar p = {paired['p_value']:.3g} ({paired['method']}: {paired['c']} only {candidate}, "
                f"{paired['b']} only {stable}); match difference {paired['mean_diff']:+.3f} "
                f"[{low:+.3f}, {high:+.3f}]"
            )
        console.print(Text(safe_text(line)))
    split = report.get("split")
    if split:
        low, high = split["ci"]
        console.print(
            Text(
                safe_text(
                    f"feedback: {candidate} minus {stable} = {split['diff']:+.3f} [{low:+.3f}, {high:+.3f}] "
                    f"({split['method']}, {split['candidate_n']} and {split['stable_n']} scored calls)"
                )
            )
        )
    verdict = str(report.get("verdict"))
    said = Text("verdict: ")
    said.append(safe_text(verdict), style=_STYLE.get(verdict, "bold"))
    said.append(safe_text(f": {report.get('reason', '')}"))
    console.print(said)


@click.command("compare")
@click.argument("url")
@click.argument("name")
@click.option(
    "--since", default="1h", show_default=True, help="The window: 30m, 24h, 7d ago, or a date (UTC)."
)
@click.option(
    "--min-sample",
    "min_sample",
    type=click.IntRange(min=1),
    default=None,
    help="Scored calls per version (or labelled shadow pairs) a verdict needs. [server default: 30]",
)
@click.option("--stable", default=None, help="The version to compare against. Default: the busiest.")
@click.option("--candidate", default=None, help="The version compared. Default: the next busiest.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compare_command(
    url: str,
    name: str,
    since: str,
    min_sample: int | None,
    stable: str | None,
    candidate: str | None,
    as_json: bool,
) -> None:
    """Compare program NAME's versions on the server at URL over the window --since: calls, error
    rate, latency, tokens, cost and feedback per version, shadow pairs, and a verdict.

    \b
    dspy-serve compare http://127.0.0.1:8000 qa --since 24h

    The exit code is the verdict: 0 better, 1 worse, 4 inconclusive, 5 insufficient_data (3: the
    server could not be reached or refused; 2: a usage error). The admin key comes from
    DSPY_SERVE_ADMIN_KEY.
    """
    now = time.time()
    start = parse_since(since, now=now)
    assert start is not None
    seconds = now - start
    if seconds <= 0:
        raise click.BadParameter(f"{since!r} is in the future", param_hint="--since")
    params: dict[str, Any] = {"since": max(1, round(seconds))}
    for key, value in (("min_sample", min_sample), ("stable", stable), ("candidate", candidate)):
        if value is not None:
            params[key] = value
    try:
        # A long window over a big store takes a while to aggregate: wait longer than for a change.
        report = admin_request(url, "GET", program_path(name, "compare"), params=params, timeout=120.0)
    except AdminFailure as failure:
        failure.echo()
        sys.exit(EXIT_UNREACHABLE)
    if not isinstance(report, dict) or report.get("verdict") not in EXIT_CODES:
        click.echo("dspy-serve: the server's answer is not a comparison report", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_report(report, console(), since)
    sys.exit(EXIT_CODES[report["verdict"]])
