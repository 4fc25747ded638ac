"""``dspy-serve call``: one call of a served program from the command line, through
:class:`dspy_serve.Client` (the API key from ``DSPY_SERVE_CLIENT_KEY``, never a flag)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click

__all__ = ["call_command"]


@click.command("call")
@click.argument("url")
@click.argument("name")
@click.argument("fields", nargs=-1)
@click.option(
    "--json",
    "body",
    default=None,
    metavar="BODY",
    help='A whole request body, {"inputs": {...}, "options": {...}} (\'-\' reads it from stdin); '
    "FIELD=VALUE arguments add to its inputs.",
)
@click.option("--stream", is_flag=True, help="Print tokens as they arrive.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def call_command(
    url: str, name: str, fields: tuple[str, ...], body: str | None, stream: bool, timeout: float
) -> None:
    """Call program NAME on the server at URL with FIELD=VALUE inputs.

    \b
    dspy-serve call http://127.0.0.1:8000 qa question="What is the capital of France?"
    dspy-serve call http://127.0.0.1:8000 triage ticket=12345 urgent=true tags='["a", "b"]'
    dspy-serve call http://127.0.0.1:8000 qa --json '{"inputs": {"question": "Hi"}, "options": {}}'

    Each VALUE is read as the program's input schema says: a text field takes it as written, a
    number, boolean, list or object field as JSON. The API key, if any, comes from
    DSPY_SERVE_CLIENT_KEY (never a flag: flags show in `ps`).
    """
    import json
    import os

    import httpx

    from dspy_serve.client import Client, RemoteProgram, field_value
    from dspy_serve.errors import ServeError

    given, options = _call_body(body)
    pairs = []
    for field in fields:
        key, sep, raw = field.partition("=")
        if not sep:
            raise click.UsageError(f"{field!r}: write FIELD=VALUE")
        pairs.append((key, raw))
    if "://" not in url:
        url = "http://" + url  # "127.0.0.1:8000" means what it says
    api_key = os.environ.get("DSPY_SERVE_CLIENT_KEY")
    try:
        with Client(url, api_key=api_key, timeout=timeout) as client:
            program = RemoteProgram(client, name, **options)
            schema = program.describe().get("input_schema", {}) if pairs else {}
            inputs = {**given, **{field: field_value(raw, field, schema) for field, raw in pairs}}
            prediction = _print_stream(program.stream(**inputs)) if stream else program(**inputs)
    except ServeError as exc:
        if exc.status == 401:
            fix = "it was refused" if api_key else "it is not set"
            detail = f"the server wants an API key: set DSPY_SERVE_CLIENT_KEY to one of its keys ({fix})"
        else:
            detail = _safe(str(exc.detail))
        click.echo(f"dspy-serve: {exc.status} {exc.code}: {detail}", err=True)
        for line in exc.field_errors():
            click.echo(f"  {_safe(line)}", err=True)
        sys.exit(1)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = str(exc) or type(exc).__name__
        click.echo(f"dspy-serve: cannot reach {_safe(url)}: {_safe(reason)}", err=True)
        sys.exit(1)
    outputs = dict(prediction.items()) if prediction is not None else {}
    usage = prediction.get_lm_usage() if prediction is not None else {}
    click.echo(json.dumps({"outputs": outputs, "usage": usage}, indent=2))


def _call_body(body: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inputs and options of ``--json``: a whole request body, as the API takes it."""
    import json

    if body is None:
        return {}, {}
    text = sys.stdin.read() if body == "-" else body
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"--json: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"inputs", "options"}:
        raise click.UsageError('--json: give a request body, {"inputs": {...}, "options": {...}}')
    inputs, options = data.get("inputs", {}), data.get("options", {})
    if not isinstance(inputs, dict) or not isinstance(options, dict):
        raise click.UsageError("--json: inputs and options are JSON objects")
    return inputs, options


def _safe(text: str) -> str:
    """Text from the server or an LM, fit for a terminal: control characters (escape sequences that
    retitle the window, recolour or move the cursor) are shown escaped; newlines and tabs stay."""
    return "".join(
        char if char in "\n\t" or not (ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0) else repr(char)[1:-1]
        for char in text
    )


def _print_stream(events: Iterator[Any]) -> Any:
    """Print tokens as they arrive, each field under its own label; return the prediction."""
    from dspy_serve.client import StatusEvent, TokenEvent

    prediction, current = None, None
    for event in events:
        if isinstance(event, TokenEvent):
            label = event.field if event.predictor in ("", "self") else f"{event.predictor}.{event.field}"
            if label != current:
                click.echo(("\n" if current is not None else "") + f"{_safe(label)}: ", nl=False)
                current = label
            click.echo(_safe(event.chunk), nl=False)
        elif not isinstance(event, StatusEvent):
            prediction = event
    if current is not None:
        click.echo()
    return prediction
