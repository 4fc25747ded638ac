"""``dspy-serve optimize``: a served program, optimized on its captured calls, written as an
artifact that ``dspy-serve run --artifact`` serves, with a provenance file beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dspy_serve.commands.common import parse_since, settings_from, with_settings

__all__ = ["optimize_command"]


def _optimize(
    target: str,
    data: str,
    optimizer: str,
    metric: str | None,
    out: Path,
    holdout: float,
    max_demos: int,
    min_score: float | None,
    since: str | None,
    max_calls: int | None,
    max_cost: float | None,
    seed: int,
    **values: Any,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dspy_serve.optimize.budget import BudgetLM
    from dspy_serve.optimize.progress import SearchProgress
    from dspy_serve.optimize.run import OptimizeJob, run_optimization
    from dspy_serve.serving.loader import ArtifactError, TargetError

    settings = settings_from(values)
    job = OptimizeJob(
        target,
        data,
        optimizer,
        out,
        metric=metric,
        holdout=holdout,
        seed=seed,
        max_demos=max_demos,
        min_score=min_score,
        since=parse_since(since),
        max_calls=max_calls,
        max_cost=max_cost,
    )
    # On a terminal, a live line on stderr; elsewhere (a pipe, CI) rich draws nothing, and the
    # summary below says the same.
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[search]}"),
        TextColumn("[dim]{task.fields[spent]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("loading the program", total=None, spent="", search="")

        def on_call(lm: BudgetLM) -> None:
            progress.update(task, spent=f"{lm.calls} LM calls, {lm.tokens} tokens, ${lm.cost:.4f}")

        def on_search(search: SearchProgress) -> None:
            progress.update(task, completed=search.scored, total=search.total, search=search.describe())

        try:
            outcome = run_optimization(
                settings,
                job,
                step=lambda text: progress.update(task, description=text),
                on_call=on_call,
                on_search=on_search,
            )
        except (ValueError, TargetError, ArtifactError) as exc:
            raise click.UsageError(str(exc)) from None
    before, after = _percent(outcome.score_before), _percent(outcome.score_after)
    click.echo(
        f"{optimizer}: {outcome.rows} calls ({outcome.train} to learn from, {outcome.heldout} held out)"
    )
    click.echo(f"held-out score: {before} before, {after} after")
    if outcome.search is not None:
        click.echo(f"search: {outcome.search.describe()}")
    click.echo(f"demos: {len(outcome.demos)} from captured calls")
    if outcome.lm is not None:
        click.echo(f"spent: {outcome.lm.calls} LM calls, {outcome.lm.tokens} tokens, ${outcome.lm.cost:.4f}")
    if outcome.stopped:
        click.echo(f"stopped early: {outcome.stopped}; wrote the best program found so far")
    click.echo(f"wrote {outcome.artifact} (provenance: {outcome.provenance})")


def _percent(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.1f}%"


optimize_command = with_settings(
    click.Command(
        "optimize",
        callback=_optimize,
        params=[
            click.Argument(["target"]),
            click.Option(
                ["--data", "data"],
                required=True,
                help="store:NAME (the store's captured calls) or an exported FILE.jsonl.",
            ),
            click.Option(
                ["--optimizer", "optimizer"],
                type=click.Choice(["harvest", "bootstrap", "mipro", "gepa"]),
                default="harvest",
                show_default=True,
                help="harvest: demos from captured traces of well-rated calls, no LM cost. "
                "bootstrap: DSPy's BootstrapFewShot (runs the program on the data). mipro: MIPROv2 "
                "(light; needs optuna). gepa: GEPA (light), fed the users' comments and corrections.",
            ),
            click.Option(
                ["--metric", "metric"],
                help="module:function or file.py:function (example, prediction, trace).",
            ),
            click.Option(
                ["--out", "out"],
                type=click.Path(dir_okay=False, path_type=Path),
                required=True,
                help="Artifact (.json) to write.",
            ),
            click.Option(
                ["--holdout", "holdout"],
                type=click.FloatRange(0, 0.9),
                default=0.2,
                show_default=True,
                help="Share of the calls held out to score before and after.",
            ),
            click.Option(
                ["--max-demos", "max_demos"],
                type=click.IntRange(1),
                default=4,
                show_default=True,
                help="Most demos per predictor.",
            ),
            click.Option(
                ["--min-score", "min_score"], type=float, help="harvest: only calls rated at least this."
            ),
            click.Option(["--since", "since"], help="Only calls since: 7d, 24h, or a date (UTC)."),
            click.Option(
                ["--max-calls", "max_calls"], type=click.IntRange(1), help="Stop after this many LM calls."
            ),
            click.Option(["--max-cost", "max_cost"], type=float, help="Stop once this many USD are spent."),
            click.Option(
                ["--seed", "seed"], type=int, default=0, show_default=True, help="Seed of the held-out split."
            ),
        ],
        help="Optimize TARGET (path/file.py:NAME, as for `run`, with --artifact as the base) on captured "
        "calls and their feedback; write the artifact and TARGET.provenance.json beside it.",
    )
)
