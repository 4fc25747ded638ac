"""``dspy-serve call``: one call of a served program from the command line, through
:class:`dspy_serve.Client` (the API key from ``DSPY_SERVE_CLIENT_KEY``, never a flag)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dspy_serve.commands.options import terminal_safe

__all__ = ["call_command"]


@click.command("call")
@click.argument("url")
@click.argument("name", required=False)
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
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for each request."
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rows of inputs (.jsonl, .csv or .parquet), submitted as one durable job (the server needs --jobs) "
    "and followed with a progress bar; results as JSON lines in input order.",
)
@click.option(
    "--job",
    is_flag=True,
    help="Run the FIELD=VALUE inputs as a one-item durable job and follow it, for a program whose call "
    "would outlive an HTTP timeout (implied by --input).",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With a job: write its result lines to this file instead of stdout. --follow continues "
    "after the file's last line.",
)
@click.option(
    "--follow",
    "follow_id",
    metavar="JOB_ID",
    default=None,
    help="Follow a job submitted earlier, writing the results not written yet.",
)
@click.option(
    "--cancel", "cancel_id", metavar="JOB_ID", default=None, help="Cancel a job and its running calls."
)
def call_command(
    url: str,
    name: str | None,
    fields: tuple[str, ...],
    body: str | None,
    stream: bool,
    timeout: float,
    input_path: Path | None,
    job: bool,
    output_path: Path | None,
    follow_id: str | None,
    cancel_id: str | None,
) -> None:
    """Call program NAME on the server at URL with FIELD=VALUE inputs, or run a file of inputs
    as a durable job.

    \b
    dspy-serve call http://127.0.0.1:8000 qa question="What is the capital of France?"
    dspy-serve call http://127.0.0.1:8000 triage ticket=12345 urgent=true tags='["a", "b"]'
    dspy-serve call http://127.0.0.1:8000 qa --json '{"inputs": {"question": "Hi"}, "options": {}}'
    dspy-serve call http://127.0.0.1:8000 qa --input questions.jsonl --output answers.jsonl
    dspy-serve call http://127.0.0.1:8000 --follow JOB_ID --output answers.jsonl
    dspy-serve call http://127.0.0.1:8000 --cancel JOB_ID

    Each VALUE is read as the program's input schema says: a text field takes it as written, a
    number, boolean, list or object field as JSON. The API key, if any, comes from
    DSPY_SERVE_CLIENT_KEY (never a flag: flags show in `ps`).

    A job is followed until it ends; Ctrl-C stops following (the job runs on) and says how to
    follow or cancel it. Exit 0: every item answered; 1: some failed (their lines hold the error),
    or the server refused; 130: interrupted.
    """
    import os

    from dspy_serve.client import Client

    given, options = _call_body(body)
    pairs = _pairs(fields)
    _check_usage(name, pairs, stream, input_path, job, follow_id, cancel_id)
    if input_path is not None and given:
        raise click.UsageError("--input gives the inputs: --json may carry only options with it")
    if "://" not in url:
        url = "http://" + url  # "127.0.0.1:8000" means what it says
    api_key = os.environ.get("DSPY_SERVE_CLIENT_KEY")
    with _reported(url, api_key), Client(url, api_key=api_key, timeout=timeout) as client:
        if cancel_id is not None or follow_id is not None or input_path is not None or job:
            sys.exit(
                _job(client, url, name, given, options, pairs, input_path, output_path, follow_id, cancel_id)
            )
        _call(client, str(name), given, options, pairs, stream)


def _pairs(fields: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for field in fields:
        key, sep, raw = field.partition("=")
        if not sep:
            raise click.UsageError(f"{field!r}: write FIELD=VALUE")
        pairs.append((key, raw))
    return pairs


def _check_usage(
    name: str | None,
    pairs: list[tuple[str, str]],
    stream: bool,
    input_path: Path | None,
    job: bool,
    follow_id: str | None,
    cancel_id: str | None,
) -> None:
    if follow_id is not None and cancel_id is not None:
        raise click.UsageError("give --follow JOB_ID or --cancel JOB_ID, not both")
    if follow_id is not None or cancel_id is not None:
        if name is not None or input_path is not None or job:
            raise click.UsageError(
                "--follow and --cancel take a JOB_ID only: dspy-serve call URL --follow JOB_ID"
            )
        return
    if name is None:
        raise click.UsageError("give the program's NAME: dspy-serve call URL NAME ...")
    if input_path is not None and pairs:
        raise click.UsageError("--input gives the inputs: drop the FIELD=VALUE arguments")
    if stream and (input_path is not None or job):
        raise click.UsageError("--stream is for one call; a job's results come as JSON lines")


@contextmanager
def _reported(url: str, api_key: str | None) -> Iterator[None]:
    """A refusal or an unreachable server is one line on stderr and exit 1, never a traceback."""
    import httpx

    from dspy_serve.errors import ServeError

    try:
        yield
    except ServeError as exc:
        if exc.status == 401:
            fix = "it was refused" if api_key else "it is not set"
            detail = f"the server wants an API key: set DSPY_SERVE_CLIENT_KEY to one of its keys ({fix})"
        else:
            detail = terminal_safe(str(exc.detail))
        click.echo(f"dspy-serve: {exc.status} {exc.code}: {detail}", err=True)
        for line in exc.field_errors():
            click.echo(f"  {terminal_safe(line)}", err=True)
        sys.exit(1)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = str(exc) or type(exc).__name__
        click.echo(f"dspy-serve: cannot reach {terminal_safe(url)}: {terminal_safe(reason)}", err=True)
        sys.exit(1)


def _inputs(program: Any, given: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    from dspy_serve.client import field_value

    schema = program.describe().get("input_schema", {}) if pairs else {}
    return {**given, **{field: field_value(raw, field, schema) for field, raw in pairs}}


def _call(
    client: Any,
    name: str,
    given: dict[str, Any],
    options: dict[str, Any],
    pairs: list[tuple[str, str]],
    stream: bool,
) -> None:
    import json

    from dspy_serve.client import RemoteProgram

    program = RemoteProgram(client, name, **options)
    inputs = _inputs(program, given, pairs)
    prediction = _print_stream(program.stream(**inputs)) if stream else program(**inputs)
    outputs = dict(prediction.items()) if prediction is not None else {}
    usage = prediction.get_lm_usage() if prediction is not None else {}
    click.echo(json.dumps({"outputs": outputs, "usage": usage}, indent=2))


def _job(
    client: Any,
    url: str,
    name: str | None,
    given: dict[str, Any],
    options: dict[str, Any],
    pairs: list[tuple[str, str]],
    input_path: Path | None,
    output_path: Path | None,
    follow_id: str | None,
    cancel_id: str | None,
) -> int:
    """Submit, follow or cancel a durable job (``dspy_serve.commands.call_job``); the exit code."""
    from dspy_serve.client import RemoteProgram
    from dspy_serve.commands.call_job import cancel_job, file_items, follow_job, refuse_existing, submit_job

    if cancel_id is not None:
        cancel_job(client, cancel_id)
        return 0
    job_id = follow_id
    if job_id is None:
        assert name is not None
        refuse_existing(output_path)
        if input_path is not None:
            items = file_items(input_path)
        else:
            items = [_inputs(RemoteProgram(client, name), given, pairs)]
        job_id = submit_job(client, name, items, options)
    return follow_job(client, url, job_id, output_path)


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


def _print_stream(events: Iterator[Any]) -> Any:
    """Print tokens as they arrive, each field under its own label; return the prediction."""
    from dspy_serve.client import StatusEvent, TokenEvent

    prediction, current = None, None
    for event in events:
        if isinstance(event, TokenEvent):
            label = event.field if event.predictor in ("", "self") else f"{event.predictor}.{event.field}"
            if label != current:
                click.echo(("\n" if current is not None else "") + f"{terminal_safe(label)}: ", nl=False)
                current = label
            click.echo(terminal_safe(event.chunk), nl=False)
        elif not isinstance(event, StatusEvent):
            prediction = event
    if current is not None:
        click.echo()
    return prediction
