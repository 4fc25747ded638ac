"""What a long run shows while it goes: done/total, rate, ETA, errors, tokens and cost.

On a terminal, a rich progress bar; otherwise (CI, a log file) one plain line every few seconds.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from dspy_serve.offline.runner import BatchSummary

__all__ = ["BatchProgress", "describe"]

_PLAIN_EVERY_S = 5.0


def _spent(summary: BatchSummary) -> str:
    cost = "cost unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    return f"{summary.failed} errors, {summary.tokens} tokens, {cost}"


def describe(summary: BatchSummary) -> str:
    """The closing summary: what ran, what failed and why, what it spent (the rate counts from
    the first row, start-up excluded)."""
    elapsed_s = summary.elapsed_s()
    ran = summary.succeeded + summary.failed
    rate = ran / elapsed_s if elapsed_s > 0 else 0.0
    lines = [
        f"{summary.done} of {summary.total if summary.total is not None else '?'} rows done: "
        f"{summary.succeeded} ok, {summary.failed} failed, {summary.skipped} done by an earlier run",
        f"{ran} rows in {elapsed_s:.1f} s ({rate:.1f} rows/s); {_spent(summary)}"
        if ran
        else "nothing left to run",
    ]
    if summary.errors:
        lines.append("errors: " + ", ".join(f"{code} x{n}" for code, n in sorted(summary.errors.items())))
    if summary.earlier_failed:
        lines.append(
            f"{summary.earlier_failed} rows failed in an earlier run: add --retry-errors to run them again"
        )
    return "\n".join(lines)


class BatchProgress:
    def __init__(self, summary: BatchSummary, stream: TextIO | None = None, *, label: str = "batch") -> None:
        self._stream = stream or sys.stderr
        self._label = label  # what runs: a batch, or a job followed (`dspy-serve call`)
        self._summary = summary
        self._last_plain = time.monotonic()  # the first plain line after a few seconds, not at once
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self._stream.isatty():
            self._bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[spent]}"),
                console=Console(file=self._stream),
                transient=False,
            )

    def __enter__(self) -> BatchProgress:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(
                "batch",
                total=self._summary.total,
                completed=self._summary.done,
                rate="",
                spent=_spent(self._summary),
            )
        return self

    def update(self, summary: BatchSummary) -> None:
        elapsed = summary.elapsed_s()
        ran = summary.succeeded + summary.failed
        rate = f"{ran / elapsed:.1f} rows/s" if elapsed > 0 else ""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=summary.done, rate=rate, spent=_spent(summary))
            return
        now = time.monotonic()
        if now - self._last_plain >= _PLAIN_EVERY_S:
            self._last_plain = now
            total = summary.total if summary.total is not None else "?"
            print(
                f"{self._label}: {summary.done}/{total} rows, {rate}, {_spent(summary)}",
                file=self._stream,
                flush=True,
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
