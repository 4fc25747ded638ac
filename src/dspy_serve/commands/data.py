"""``dspy-serve data``: export a program's captured calls as a dataset, count them, delete a user's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dspy_serve.commands.common import parse_since, settings_from, with_settings
from dspy_serve.settings import ServeSettings

__all__ = ["data_group"]

T = TypeVar("T")


@click.group("data")
def data_group() -> None:
    """Datasets from captured calls and their feedback (serve with --capture)."""


def _with_store(settings: ServeSettings, work: Callable[[Any], Awaitable[T]]) -> T:
    from dspy_serve.store import Store, store_url

    async def run() -> T:
        store = await Store.open(store_url(settings))
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except OSError as exc:
        raise click.ClickException(f"cannot reach the store: {exc}") from None


def _export(
    name: str,
    since: str | None,
    min_score: float | None,
    corrected_only: bool,
    fmt: str,
    out: Path | None,
    **values: Any,
) -> None:
    from dspy_serve.data.dataset import DataQuery
    from dspy_serve.data.export import export_dataset, manifest_path

    settings = settings_from(values)
    query = DataQuery(name, parse_since(since), min_score, corrected_only)
    target = out or Path(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}")
    try:
        snapshot = _with_store(settings, lambda store: export_dataset(store, query, target, fmt))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {snapshot['rows']} rows of {name} to {target}")
    click.echo(f"sha256 {snapshot['sha256']}  (manifest: {manifest_path(target)})")


data_group.add_command(
    with_settings(
        click.Command(
            "export",
            callback=_export,
            params=[
                click.Argument(["name"]),
                click.Option(["--since"], help="Only calls since: 7d, 24h, 30m ago, or a date (UTC)."),
                click.Option(
                    ["--min-score", "min_score"], type=float, help="Only calls rated at least this."
                ),
                click.Option(
                    ["--corrected-only", "corrected_only"], is_flag=True, help="Only calls with a correction."
                ),
                click.Option(
                    ["--format", "fmt"],
                    type=click.Choice(["jsonl", "parquet"]),
                    default="jsonl",
                    show_default=True,
                    help="JSON lines, or Parquet (needs pyarrow).",
                ),
                click.Option(
                    ["--out", "out"],
                    type=click.Path(dir_okay=False, path_type=Path),
                    help="File to write (default: NAME-DATE.FORMAT); its manifest (sha256) goes beside it.",
                ),
            ],
            help="Write program NAME's captured calls, one row each (call id, version, inputs, outputs, "
            "correction, score, comment, trace), as a read-only snapshot with its sha256.",
        )
    )
)


def _stats(name: str | None, **values: Any) -> None:
    from dspy_serve.data.stats import dataset_stats

    settings = settings_from(values)
    rows = _with_store(settings, lambda store: dataset_stats(store, name))
    if not rows:
        click.echo("no captured calls" + (f" of {name}" if name else ""))
        return
    header = ("program", "version", "day", "calls", "errors", "rated", "mean score", "corrected")
    table = [header, *[_stat_cells(row) for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _stat_cells(row: dict[str, Any]) -> tuple[str, ...]:
    mean = f"{row['mean_score']:.2f}" if row["mean_score"] is not None else "-"
    return (
        row["program"],
        (row["version"] or "-")[:12],
        row["day"],
        str(row["calls"]),
        str(row["errors"]),
        str(row["rated"]),
        mean,
        str(row["corrected"]),
    )


data_group.add_command(
    with_settings(
        click.Command(
            "stats",
            callback=_stats,
            params=[click.Argument(["name"], required=False)],
            help="Captured calls by program, version and day: counts, failures, ratings, corrections.",
        )
    )
)


def _delete(call: str | None, key: str | None, **values: Any) -> None:
    from dspy_serve.store.calls import delete_calls

    if (call is None) == (key is None):
        raise click.UsageError("give exactly one of --call ID and --key NAME")
    settings = settings_from(values)
    removed = _with_store(settings, lambda store: delete_calls(store, call_id=call, key_name=key))
    click.echo(f"deleted {len(removed)} calls and their feedback")
    from dspy_serve.optimize.provenance import artifacts_using

    for path, ids in artifacts_using(set(removed), Path(".")):
        click.echo(f"  {path} has demos from {len(ids)} of them: optimize it again without them")


data_group.add_command(
    with_settings(
        click.Command(
            "delete",
            callback=_delete,
            params=[
                click.Option(["--call", "call"], help="The call id to delete."),
                click.Option(["--key", "key"], help="Delete every call made with this API key name."),
            ],
            help="Delete captured calls and their feedback (a user's data), and name the optimized "
            "artifacts under this directory whose demos came from them (their provenance files say).",
        )
    )
)
