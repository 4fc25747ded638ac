"""``dspy-serve batch --engine ray``: the same rows through Ray Data, for inputs beyond one machine.

Ray Data reads the file; ``map_batches`` sends blocks of rows to a pool of actors, each holding
one started :class:`~dspy_serve.serving.service.Service` (so the model, allow-list, artifact,
rate limits, retries and deadlines are those of ``run``), which runs its rows concurrently
through :class:`~.items.InProcessItems`. The driver reads the results back in input order
(``preserve_order``) and writes them through the same :class:`~.results.ResultsFile`, so the
lines are the in-process run's, and resume works the same way.

Differences, said here so no one finds them by surprise: a line that is not valid JSON fails
the read (Ray's reader is strict), where the in-process run gives it an error line; and a
resumed run first reads the whole input once to skip its done rows (``split_at_indices``).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dspy_serve.offline.results import ResultsFile
from dspy_serve.offline.rows import Row, input_format
from dspy_serve.offline.runner import BatchSummary, ItemOutcome
from dspy_serve.settings import ServeSettings

__all__ = ["ProgramActor", "RayBatchFailed", "run_on_ray_data"]


class RayBatchFailed(RuntimeError):
    """Ray Data could not run the rows (the input could not be read, an actor could not start)."""


class ProgramActor:
    """One Ray Data actor: a started service, its rows run ``concurrency`` at a time."""

    def __init__(self, settings: dict[str, Any], key: str | None, concurrency: int) -> None:
        from dspy_serve.offline.items import InProcessItems
        from dspy_serve.serving.service import CallOptions, Service

        self._loop = asyncio.new_event_loop()
        self._service = Service(ServeSettings(**settings))
        (program,) = self._service.programs.values()
        self._loop.run_until_complete(self._service.start())
        self._items = InProcessItems(self._service, program, CallOptions())
        self._key = key
        self._gate = asyncio.Semaphore(concurrency)

    async def _one(self, record: dict[str, Any]) -> ItemOutcome:
        inputs = {name: value for name, value in record.items() if name != self._key}
        async with self._gate:
            return await self._items(Row(0, None, inputs))

    async def _all(self, records: list[dict[str, Any]]) -> list[ItemOutcome]:
        return await asyncio.gather(*(self._one(record) for record in records))

    def __call__(self, batch: Any) -> dict[str, list[str]]:
        records: list[dict[str, Any]] = batch.to_pylist()
        # Ray calls from a thread of its own: the actor's one loop runs each block to its end.
        outcomes = self._loop.run_until_complete(self._all(records))
        keys = [json.dumps(r.get(self._key) if self._key else None) for r in records]
        return {"key": keys, "outcome": [json.dumps(asdict(outcome)) for outcome in outcomes]}


def _dataset(path: Path) -> Any:
    import ray.data

    match input_format(path):
        case "parquet":
            return ray.data.read_parquet(str(path))
        case "csv":
            # Every cell as text, as the in-process reader gives it: the program's schema converts.
            import pyarrow as pa
            from pyarrow import csv as pa_csv

            with path.open(encoding="utf-8", newline="") as lines:
                header = next(csv.reader(lines), [])
            options = pa_csv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()))
            return ray.data.read_csv(str(path), convert_options=options)
        case _:
            return ray.data.read_json(str(path), lines=True)


def run_on_ray_data(
    settings: ServeSettings,
    source: Path,
    results: ResultsFile,
    *,
    key: str | None,
    concurrency: int,
    actors: int,
    summary: BatchSummary,
    on_progress: Callable[[BatchSummary], None],
) -> None:
    try:
        import ray
        import ray.data  # pandas and the rest of Ray Data's own dependencies
    except ImportError as exc:
        raise ImportError(f"--engine ray needs Ray Data ({exc}): pip install 'dspy-serve[ray]'") from None

    from dspy_serve.serving.loader import relocate_files

    done = summary.skipped
    # Actors start in Ray's own working directory: every program file and artifact by its full path.
    located = relocate_files(settings, lambda path: str(Path(path).resolve()))
    local = settings.ray_address is None
    if local:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    else:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    try:
        import ray.data

        # Ray Data logs its plan, and a failing block's remote traceback, on the console (its
        # import sets that up); the log file in Ray's session keeps them, and the user gets the
        # cause on one line (RayBatchFailed).
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = _dataset(source)
        if done:
            dataset = dataset.split_at_indices([done])[1]
        per_actor = math.ceil(concurrency / actors)
        answered = dataset.map_batches(
            ProgramActor,
            fn_constructor_kwargs={
                "settings": located.to_data(secrets=True),
                "key": key,
                "concurrency": per_actor,
            },
            batch_format="pyarrow",
            batch_size=per_actor * 2,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=0.25,  # the actors wait on the LM; the machine's cores are for reading and writing
        )
        summary.started = time.monotonic()
        with results:
            for index, row in enumerate(answered.iter_rows(), start=done):
                outcome = ItemOutcome(**json.loads(row["outcome"]))
                row_key = json.loads(row["key"]) if key else index
                results.write(outcome.line(Row(index, row_key, None)))
                summary.add(outcome)
                on_progress(summary)
    except ray.exceptions.RayError as exc:
        # Ray's message holds the remote traceback: the user gets its cause, on one line.
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        first = next((line for line in str(cause).splitlines() if line.strip()), "")
        raise RayBatchFailed(f"Ray Data failed: {type(cause).__name__}: {first[:300]}") from None
    finally:
        if local:
            ray.shutdown()
