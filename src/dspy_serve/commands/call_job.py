"""``dspy-serve call --input FILE`` (or ``--job``): inputs submitted as a durable job, followed
with a progress bar, its results written as JSON lines in input order.

Following is a loop over the job's status (:meth:`Client.follow`): at each snapshot the progress
moves and the result lines finished since the last one are written (:meth:`Client.job_results`
from the next offset, which survives a dropped connection). The output file takes whole lines
only (:class:`~dspy_serve.offline.results.ResultsFile`), so ``--follow JOB_ID`` continues after
its last line, whether following stopped on Ctrl-C, a kill or a lost network. Ctrl-C stops the
following, never the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dspy_serve.client import Client, RemoteProgram
from dspy_serve.offline.command import EXIT_ROWS_FAILED
from dspy_serve.offline.progress import BatchProgress
from dspy_serve.offline.results import ResultsFile
from dspy_serve.offline.rows import InputFileError, read_rows
from dspy_serve.offline.runner import BatchSummary

__all__ = ["EXIT_INTERRUPTED", "cancel_job", "file_items", "follow_job", "refuse_existing", "submit_job"]

EXIT_INTERRUPTED = 130  # Ctrl-C: following stopped, the job runs on (as `dspy-serve batch`)
POLL_S = 0.5


def file_items(path: Path) -> list[Any]:
    """A file's rows as job items, in order. A row that cannot be read is still an item (its
    text), so the server gives it its own ``invalid_input`` result and the indexes stay the rows'."""
    try:
        return [row.inputs if row.inputs is not None else row.problem for row in read_rows(path)]
    except InputFileError as exc:
        raise click.UsageError(str(exc)) from None


def submit_job(client: Client, name: str, items: list[Any], options: dict[str, Any]) -> str:
    job_id = RemoteProgram(client, name, **options).submit(items)
    count = f"{len(items)} item" + ("" if len(items) == 1 else "s")
    click.echo(f"dspy-serve: job {job_id}: {count} submitted", err=True)
    return job_id


@dataclass
class _Following:
    """What one follower has seen: the progress figures (from the job's status, counted from
    when this follower started) and the errors of the lines it wrote, by code."""

    summary: BatchSummary = field(default_factory=BatchSummary)
    base: tuple[int, int] | None = None  # (done, failed) when following started
    errors: dict[str, int] = field(default_factory=dict)

    def update(self, status: dict[str, Any]) -> None:
        done, failed = int(status.get("done") or 0), int(status.get("failed") or 0)
        if self.base is None:
            self.base = (done, failed)
            self.summary.started = time.monotonic()
        summary = self.summary
        summary.total = int(status.get("total") or 0)
        summary.skipped = sum(self.base)  # finished before this follower came: not in its rate
        summary.succeeded, summary.failed = done - self.base[0], failed - self.base[1]
        summary.tokens = int(status.get("tokens") or 0)
        summary.cost_usd = status.get("cost_usd")

    def note(self, line: dict[str, Any]) -> None:
        error = line.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", "error"))
            self.errors[code] = self.errors.get(code, 0) + 1


class _Sink:
    """Where result lines go: the output file (whole lines, resumable) or stdout."""

    def __init__(self, output: Path | None) -> None:
        self.file = ResultsFile(output) if output is not None else None

    def __enter__(self) -> _Sink:
        if self.file is not None:
            self.file.__enter__()
        return self

    def write(self, line: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(line)
        else:
            click.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))

    def __exit__(self, *exc_info: Any) -> None:
        if self.file is not None:
            self.file.__exit__(*exc_info)


def follow_job(client: Client, url: str, job_id: str, output: Path | None, *, poll: float = POLL_S) -> int:
    """Follow the job to its end, writing its result lines; the exit code. The lines start after
    those ``output`` already holds (all of them when there is no file)."""
    offset = ResultsFile(output).done_rows() if output is not None else 0
    if output is not None and offset:
        _check_continues(client, job_id, output, offset)
    following = _Following()
    status = client.job(job_id)
    following.update(status)  # the bar's total (and so its ETA) from the start
    try:
        with _Sink(output) as sink, BatchProgress(following.summary, label="job") as progress:
            for status in client.follow(job_id, poll=poll):
                following.update(status)
                offset = _write_finished(client, job_id, offset, sink, following)
                progress.update(following.summary)
            offset = _write_finished(client, job_id, offset, sink, following)  # the last ones
    except KeyboardInterrupt:
        again = f" --output {output}" if output is not None else ""
        click.echo(
            f"dspy-serve: stopped following job {job_id} after {offset} result lines; it keeps running "
            f"on the server.\n  follow it again: dspy-serve call {url} --follow {job_id}{again}\n"
            f"  cancel it:       dspy-serve call {url} --cancel {job_id}",
            err=True,
        )
        return EXIT_INTERRUPTED
    click.echo(_closing(job_id, status, following, output), err=True)
    # A cancelled job's items are not counted failed, but they have no answer either.
    answered_all = status.get("state") == "done" and not int(status.get("failed") or 0)
    return 0 if answered_all else EXIT_ROWS_FAILED


def _write_finished(client: Client, job_id: str, offset: int, sink: _Sink, following: _Following) -> int:
    for line in client.job_results(job_id, offset=offset, follow=False):
        sink.write(line)
        following.note(line)
        offset = int(line["index"]) + 1
    return offset


def _check_continues(client: Client, job_id: str, output: Path, done: int) -> None:
    """The file's last line must be this job's line ``done - 1``: --follow appends to its own
    results only."""
    last: Any = {}
    with output.open(encoding="utf-8", errors="replace") as lines:
        for text in lines:
            try:
                last = json.loads(text) if text.strip() else last
            except ValueError:
                last = {}  # not a result line: no job's
    last = last if isinstance(last, dict) else {}
    theirs = next(iter(client.job_results(job_id, offset=done - 1, follow=False)), {})
    if last.get("index") != done - 1 or last.get("call_id") != theirs.get("call_id"):
        raise click.UsageError(
            f"--output {output}: its lines are not job {job_id}'s results (its last line is not the "
            f"job's item {done - 1}); pass another file"
        )


def _closing(job_id: str, status: dict[str, Any], following: _Following, output: Path | None) -> str:
    total, done, failed = (int(status.get(k) or 0) for k in ("total", "done", "failed"))
    cost = status.get("cost_usd")
    spent = f"{status.get('tokens') or 0} tokens, " + ("cost unknown" if cost is None else f"${cost:.4f}")
    lines = [
        f"job {job_id} {status.get('state')}: {done} of {total} items answered, {failed} failed; {spent}"
    ]
    if following.errors:
        lines.append("errors: " + ", ".join(f"{code} x{n}" for code, n in sorted(following.errors.items())))
    if output is not None:
        lines.append(f"results: {output}")
    return "\n".join(lines)


def cancel_job(client: Client, job_id: str) -> None:
    status = client.cancel_job(job_id)
    click.echo(json.dumps(status, indent=2))
    click.echo(
        f"dspy-serve: job {job_id} {status.get('state')}: {status.get('done')} of {status.get('total')} "
        f"items answered, {status.get('failed')} failed",
        err=True,
    )


def refuse_existing(output: Path | None) -> None:
    """A new job never appends to another job's results."""
    if output is not None and output.exists() and output.stat().st_size > 0:
        raise click.UsageError(
            f"--output {output} already holds results: pass another file, or continue the job that wrote "
            "them with --follow JOB_ID"
        )
