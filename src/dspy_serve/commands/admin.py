"""``dspy-serve admin URL ...``: a program's versions and rollout, through the admin API (#27).

The admin key comes from ``DSPY_SERVE_ADMIN_KEY``, never a flag (flags show in ``ps`` and in
shell history). Every answer that is a rollout prints as one table of the program's versions,
its pointers marked; ``--json`` prints the answer as the server gave it. An error prints the
server's status, code and detail (and each field error): exit 1, as ``call`` does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import click

from dspy_serve.commands.options import terminal_safe

__all__ = ["ADMIN_KEY_ENV", "AdminFailure", "admin_group", "admin_request", "render_rollout", "safe_text"]

ADMIN_KEY_ENV = "DSPY_SERVE_ADMIN_KEY"


class AdminFailure(Exception):
    """The admin API refused (``status`` > 0) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details or []

    def echo(self) -> None:
        click.echo(f"dspy-serve: {safe_text(self.message)}", err=True)
        for line in self.details:
            click.echo(f"  {safe_text(line)}", err=True)


def safe_text(text: str) -> str:
    """Server text fit for a terminal (escape sequences shown, not run), as ``call`` prints it."""
    return terminal_safe(text)


def base_url(url: str) -> str:
    """``127.0.0.1:8000`` means what it says, as for ``call``."""
    return ("http://" + url if "://" not in url else url).rstrip("/")


def program_path(name: str, *rest: str) -> str:
    return "/".join(["/admin/programs", quote(name, safe=""), *rest])


def admin_request(
    url: str,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> Any:
    """One call to the admin API; its JSON answer, or :class:`AdminFailure` saying why not."""
    import httpx

    key = os.environ.get(ADMIN_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    target = base_url(url)
    try:
        with httpx.Client(base_url=target, headers=headers, timeout=timeout) as client:
            response = client.request(method, path, json=body, params=params)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise AdminFailure(0, f"cannot reach {target}: {str(exc) or type(exc).__name__}") from None
    if response.status_code >= 400:
        raise _failure(response, key is not None)
    try:
        return response.json()
    except ValueError:
        raise AdminFailure(response.status_code, f"{target}{path} did not answer JSON") from None


def _failure(response: Any, key_given: bool) -> AdminFailure:
    status = response.status_code
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return AdminFailure(status, f"{status}: {response.text[:200] or 'no detail'}")
    code = str(problem.get("code") or problem.get("title") or "error")
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    if status == 401:
        fix = "it was refused" if key_given else "it is not set"
        detail = f"the admin API wants an admin key: set {ADMIN_KEY_ENV} to one of its keys ({fix})"
    elif status == 404 and code in ("http_error", "not_found"):
        detail = f"{detail} (is the admin API on? The server needs --admin-keys or --admin-keys-file)"
    lines = []
    for err in problem.get("errors") or []:
        if isinstance(err, dict):
            loc = [str(part) for part in err.get("loc") or []]
            loc = loc[1:] if loc[:1] == ["body"] else loc  # as ServeError.field_errors says them
            lines.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return AdminFailure(status, f"{status} {code}: {detail}", lines)


def render_rollout(rollout: Mapping[str, Any], console: Any) -> None:
    """A program's rollout: its pointers, split and shadow in a line each, then its versions."""
    from rich.table import Table
    from rich.text import Text

    stable, candidate = rollout.get("stable"), rollout.get("candidate")
    previous = list(rollout.get("previous") or [])
    head = f"{rollout.get('program')}: stable {stable or '-'}, candidate {candidate or '-'}"
    if previous:
        head += f", previous {', '.join(str(name) for name in previous)}"
    console.print(Text(safe_text(f"{head} (revision {rollout.get('revision')})"), style="bold"))
    split = rollout.get("split")
    if split:
        console.print(
            Text(
                safe_text(
                    f"split: {_number(split.get('weight'))} % of calls to {split.get('candidate')}, "
                    f"sticky by {split.get('sticky') or 'key'}"
                )
            )
        )
    shadow = rollout.get("shadow")
    if shadow:
        rate = shadow.get("rate")
        share = f"{_number(100 * rate)} %" if isinstance(rate, int | float) else str(rate)
        console.print(Text(safe_text(f"shadow: {shadow.get('candidate')} also runs on {share} of calls")))
    table = Table(show_edge=False, pad_edge=False)
    for column in ("version", "pointer", "state", "sha256", "loaded", "artifact"):
        table.add_column(column)
    for version in rollout.get("versions") or []:
        name = version.get("name")
        pointers = [
            label
            for label, present in (
                ("stable", name == stable),
                ("candidate", name == candidate),
                ("previous", name in previous),
                ("split", name == (split or {}).get("candidate")),
                ("shadow", name == (shadow or {}).get("candidate")),
            )
            if present
        ]
        artifact = str(version.get("artifact") or "-")
        if version.get("provenance"):
            artifact += f" (provenance {version['provenance']})"
        table.add_row(
            *(
                Text(safe_text(str(cell)))
                for cell in (
                    name,
                    ", ".join(pointers) or "-",
                    version.get("state") or "-",
                    str(version.get("sha256") or "-")[:12],
                    _when(version.get("loaded_at")),
                    artifact,
                )
            )
        )
    console.print(table)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _when(value: Any) -> str:
    """An epoch time, or an ISO text as the server wrote it."""
    if isinstance(value, int | float):
        import time

        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"
    return str(value or "-")


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _answer(ctx: click.Context, method: str, path: str, body: Mapping[str, Any] | None = None) -> None:
    """Call the admin API and print its answer (a rollout as a table, a version as a line)."""
    url, as_json = ctx.obj["url"], ctx.obj.get("json", False)
    try:
        answer = admin_request(url, method, path, body=body)
    except AdminFailure as failure:
        failure.echo()
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif isinstance(answer, dict) and "versions" in answer:
        render_rollout(answer, console())
    elif isinstance(answer, dict):
        click.echo(
            safe_text(
                f"loaded {answer.get('name')} (sha256 {str(answer.get('sha256'))[:12]}) "
                f"from {answer.get('artifact')}"
            )
        )
    else:
        click.echo(json.dumps(answer))


@click.group("admin")
@click.argument("url")
@click.pass_context
def admin_group(ctx: click.Context, url: str) -> None:
    """Versions and rollouts of the server at URL: load, promote, roll back, split, shadow.

    \b
    dspy-serve admin http://127.0.0.1:8000 show qa
    dspy-serve admin http://127.0.0.1:8000 load qa v2 qa-v2.json
    dspy-serve admin http://127.0.0.1:8000 shadow qa v2 0.2
    dspy-serve admin http://127.0.0.1:8000 split qa v2 10
    dspy-serve admin http://127.0.0.1:8000 promote qa v2

    The admin key comes from DSPY_SERVE_ADMIN_KEY (never a flag: flags show in `ps`). Exit 0 when
    the server did it, 1 when it refused or could not be reached, 2 for a usage error.
    """
    ctx.obj = {"url": url}


F = TypeVar("F", bound=Callable[..., Any])


def _json_option(command: F) -> F:
    """``--json``, on each subcommand: it is written after the command, where a script puts it."""

    def remember(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
        ctx.ensure_object(dict)["json"] = value
        return value

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Print the server's JSON answer as it is.",
    )(command)


@admin_group.command("show")
@_json_option
@click.argument("name")
@click.pass_context
def show_command(ctx: click.Context, name: str) -> None:
    """Program NAME's versions, pointers, split and shadow."""
    _answer(ctx, "GET", program_path(name))


@admin_group.command("load")
@_json_option
@click.argument("name")
@click.argument("version")
@click.argument("artifact")
@click.pass_context
def load_command(ctx: click.Context, name: str, version: str, artifact: str) -> None:
    """Load ARTIFACT as version VERSION of program NAME. ARTIFACT is a path the server reads,
    under the directory it allows (--artifact-dir); nothing is uploaded."""
    _answer(ctx, "POST", program_path(name, "versions"), {"name": version, "artifact": artifact})


@admin_group.command("promote")
@_json_option
@click.argument("name")
@click.argument("version")
@click.pass_context
def promote_command(ctx: click.Context, name: str, version: str) -> None:
    """Make VERSION program NAME's stable version; the split and the shadow end."""
    _answer(ctx, "POST", program_path(name, "promote"), {"version": version})


@admin_group.command("rollback")
@_json_option
@click.argument("name")
@click.pass_context
def rollback_command(ctx: click.Context, name: str) -> None:
    """Send all of program NAME's traffic back to its previous stable version; the split and the
    shadow end."""
    _answer(ctx, "POST", program_path(name, "rollback"))


def _sticky(_: click.Context, __: click.Parameter, value: str) -> str:
    kind, colon, rest = value.partition(":")
    if value == "key" or (colon and kind in ("header", "input") and rest):
        return value
    raise click.BadParameter(f"{value!r}: write key, header:NAME or input:FIELD")


@admin_group.command("split")
@_json_option
@click.argument("name")
@click.argument("candidate")
@click.argument("weight", type=click.FloatRange(0, 100))
@click.option(
    "--sticky",
    default="key",
    show_default=True,
    callback=_sticky,
    help="What keeps a caller on one side: its API key, a request header (header:NAME) or an "
    "input field (input:FIELD).",
)
@click.pass_context
def split_command(ctx: click.Context, name: str, candidate: str, weight: float, sticky: str) -> None:
    """Send WEIGHT percent of program NAME's calls to CANDIDATE (0 ends the split)."""
    body = {"candidate": candidate, "weight": weight, "sticky": sticky}
    _answer(ctx, "PUT", program_path(name, "split"), body)


@admin_group.command("shadow")
@_json_option
@click.argument("name")
@click.argument("candidate")
@click.argument("rate", type=click.FloatRange(0, 1))
@click.pass_context
def shadow_command(ctx: click.Context, name: str, candidate: str, rate: float) -> None:
    """Also run CANDIDATE on a share RATE (0 to 1) of program NAME's calls; its answers are
    recorded, never returned (0 ends the shadow)."""
    _answer(ctx, "PUT", program_path(name, "shadow"), {"candidate": candidate, "rate": rate})
