"""``dspy-serve batch``: one program over a file of rows, in this process (TARGET as for ``run``),
on Ray Data, or against a served program (the work itself is :mod:`dspy_serve.offline`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from dspy_serve.commands.options import (
    GroupedCommand,
    command_settings,
    config_option,
    or_exit_3,
    settings_params,
)
from dspy_serve.settings import ENV_PREFIX, ServeSettings

__all__ = ["batch_command"]


def _batch(
    config: Path | None,
    input_path: Path,
    output_path: Path,
    key: str | None,
    concurrency: int,
    url: str | None,
    retry_errors: bool,
    **values: Any,
) -> None:
    from dspy_serve.logs import configure_logging
    from dspy_serve.offline.command import EXIT_ROWS_FAILED, BatchJob, closing_summary, run_batch
    from dspy_serve.offline.results import ResumeMismatch
    from dspy_serve.offline.rows import InputFileError, count_rows
    from dspy_serve.offline.runner import BatchSummary
    from dspy_serve.redaction import remember_secrets
    from dspy_serve.serving.secrets import secrets_of

    if not input_path.is_file():
        raise click.UsageError(f"--input {input_path}: no such file")
    settings: ServeSettings | None = None
    program: str | None = None
    if url is None:
        # A long run's console is its progress: the service's own info lines only when asked for.
        if values.get("log_level") is None and f"{ENV_PREFIX}LOG_LEVEL" not in os.environ:
            values["log_level"] = "warning"
        settings = command_settings(config, values)
        configure_logging(settings.log_level, settings.log_format)
        remember_secrets(secrets_of(settings))  # a row's error or a log line never shows one
        if retry_errors and settings.engine == "ray":
            raise click.UsageError("--retry-errors runs in this process or with --url, not with --engine ray")
    else:
        targets: tuple[str, ...] = tuple(values.get("programs") or ())
        if len(targets) != 1:
            raise click.UsageError("with --url, give the served program's NAME as the one TARGET")
        program = targets[0]
    job = BatchJob(
        input=input_path,
        output=output_path,
        key=key,
        concurrency=concurrency,
        url=url,
        api_key=os.environ.get("DSPY_SERVE_CLIENT_KEY"),
        program=program,
        retry_errors=retry_errors,
        engine=settings.engine if settings is not None else "uvicorn",
        ray_actors=settings.replicas if settings is not None else 1,
    )
    try:
        summary = BatchSummary(total=count_rows(input_path))
    except InputFileError as exc:
        raise click.UsageError(str(exc)) from None
    interrupted = False
    try:
        with or_exit_3():
            run_batch(job, settings, summary)
    except ResumeMismatch as exc:
        raise click.UsageError(str(exc)) from None
    except RuntimeError as exc:  # the engine itself failed (Ray Data), not a row
        click.echo(f"dspy-serve: batch stopped: {exc}", err=True)
        click.echo(closing_summary(summary), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        interrupted = True
    click.echo(closing_summary(summary), err=True)
    if interrupted:
        click.echo(f"interrupted: rerun the same command to resume after row {summary.done - 1}", err=True)
        sys.exit(130)
    click.echo(f"results: {output_path}", err=True)
    if summary.rows_failed:
        sys.exit(EXIT_ROWS_FAILED)


batch_command = GroupedCommand(
    "batch",
    callback=_batch,
    params=[
        click.Option(
            ["--input", "input_path"],
            type=click.Path(dir_okay=False, path_type=Path),
            required=True,
            help="Rows of inputs: .jsonl (one JSON object a line), .csv (a header row) or .parquet.",
        ),
        click.Option(
            ["--output", "output_path"],
            type=click.Path(dir_okay=False, path_type=Path),
            required=True,
            help="JSON lines, one per input row in input order. Rerunning resumes where it stopped.",
        ),
        click.Option(
            ["--key"], default=None, help="The column that identifies a row (default: its number, from 0)."
        ),
        click.Option(
            ["--concurrency"],
            type=click.IntRange(1, 4096),
            default=16,
            show_default=True,
            help="Rows run at once.",
        ),
        click.Option(
            ["--url"],
            default=None,
            help="Send the rows to a served program at this URL (TARGET is then its NAME; the key "
            "comes from DSPY_SERVE_CLIENT_KEY).",
        ),
        click.Option(
            ["--retry-errors"],
            is_flag=True,
            default=False,
            help="Run again the rows an earlier run answered with an error; the others are kept.",
        ),
        config_option(),
        *settings_params(),
    ],
    help="Run one program over a file of rows, in this process (TARGET as for run), on Ray Data "
    "(--engine ray, --replicas program instances) or against a served program (--url URL NAME). "
    "Exit 0: every row answered; 1: some rows failed (their lines hold the error); 130: "
    "interrupted, rerun to resume.",
    context_settings={"max_content_width": 110},
)
