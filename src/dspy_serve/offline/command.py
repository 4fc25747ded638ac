"""``dspy-serve batch``: one program over a file, in-process or against a served program."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from dspy_serve.offline.items import InProcessItems, RemoteItems
from dspy_serve.offline.progress import BatchProgress, describe
from dspy_serve.offline.results import ResultsFile
from dspy_serve.offline.rows import Row, read_rows
from dspy_serve.offline.runner import BatchSummary, RunItem, run_rows
from dspy_serve.settings import ServeSettings

__all__ = ["EXIT_ROWS_FAILED", "BatchJob", "closing_summary", "run_batch"]

EXIT_ROWS_FAILED = 1  # the run finished and some rows have an error line


@dataclass(frozen=True)
class BatchJob:
    input: Path
    output: Path
    key: str | None = None
    concurrency: int = 16
    url: str | None = None  # run against this server instead of in-process
    api_key: str | None = None  # for ``url``
    program: str | None = None  # with ``url``: the served program's name
    engine: str = "uvicorn"  # the settings' engine: "ray" runs the rows on Ray Data
    ray_actors: int = 1  # with "ray": program instances (the settings' replicas)
    retry_errors: bool = False  # run again the rows whose line is an error, rewriting the file


def _pending(job: BatchJob, results: ResultsFile, summary: BatchSummary) -> Iterator[Row]:
    """The input rows not answered yet: an earlier run's lines are checked, then skipped."""
    rows = read_rows(job.input, job.key)
    done = results.done_rows()
    for _, line in results.answered(rows, done):
        summary.note_earlier(line)
    return rows


def _retried(job: BatchJob, summary: BatchSummary) -> Iterator[Row]:
    """Every input row: an earlier answer kept as it is, an error line's row run again."""
    earlier = ResultsFile(job.output)
    rows = read_rows(job.input, job.key)
    done = earlier.done_rows()
    for row, line in earlier.answered(rows, done):
        if line.get("error") is None:
            yield replace(row, previous=line)
        else:
            yield row
    yield from rows


def _retry_path(output: Path) -> Path:
    return output.with_name(output.name + ".retry")


def _on_ray(job: BatchJob, settings: ServeSettings, summary: BatchSummary) -> None:
    from dspy_serve.offline.ray_engine import run_on_ray_data

    results = ResultsFile(job.output)
    _pending(job, results, summary)
    with BatchProgress(summary) as progress:
        run_on_ray_data(
            settings,
            job.input,
            results,
            key=job.key,
            concurrency=job.concurrency,
            actors=job.ray_actors,
            summary=summary,
            on_progress=progress.update,
        )


async def _run(job: BatchJob, run_item: RunItem, summary: BatchSummary) -> BatchSummary:
    if not job.retry_errors:
        results = ResultsFile(job.output)
        rows = _pending(job, results, summary)
        with results, BatchProgress(summary) as progress:
            return await _write(rows, run_item, results, job, summary, progress)
    # The file is written anew beside the old one, which stays whole until the new one is.
    retry = ResultsFile(_retry_path(job.output))
    retry.path.unlink(missing_ok=True)
    try:
        with retry, BatchProgress(summary) as progress:
            await _write(_retried(job, summary), run_item, retry, job, summary, progress)
    except BaseException:
        retry.path.unlink(missing_ok=True)
        raise
    os.replace(retry.path, job.output)
    return summary


async def _write(
    rows: Iterator[Row],
    run_item: RunItem,
    results: ResultsFile,
    job: BatchJob,
    summary: BatchSummary,
    progress: BatchProgress,
) -> BatchSummary:
    return await run_rows(
        rows,
        run_item,
        results.write,
        concurrency=job.concurrency,
        summary=summary,
        on_progress=progress.update,
    )


async def _in_process(job: BatchJob, settings: ServeSettings, summary: BatchSummary) -> BatchSummary:
    from dspy_serve.serving.service import CallOptions, Service

    service = Service(settings)
    if len(service.programs) != 1:
        raise ValueError(f"batch runs one program; the targets name {len(service.programs)}")
    (program,) = service.programs.values()
    await service.start()
    try:
        return await _run(job, InProcessItems(service, program, CallOptions()), summary)
    finally:
        service.begin_shutdown()
        await service.stop()


async def _remote(job: BatchJob, summary: BatchSummary) -> BatchSummary:
    from dspy_serve.client import Client

    if job.program is None:
        raise ValueError("with --url, name the served program: dspy-serve batch --url URL NAME ...")
    async with Client(job.url or "", api_key=job.api_key, max_connections=job.concurrency) as client:
        return await _run(job, RemoteItems(client, job.program, {}), summary)


def run_batch(job: BatchJob, settings: ServeSettings | None, summary: BatchSummary) -> None:
    """Run the job to its end, or to Ctrl-C, which leaves whole lines to resume from."""
    if job.url is not None:
        asyncio.run(_remote(job, summary))
    elif job.engine == "ray":
        assert settings is not None
        _on_ray(job, settings, summary)
    else:
        assert settings is not None
        asyncio.run(_in_process(job, settings, summary))


def closing_summary(summary: BatchSummary) -> str:
    return describe(summary)
