"""The job runner of one worker process: claims items from the store, runs each as a call of
its own, records its result, and keeps the claims it holds alive.

- **A budget of its own.** At most ``job_concurrency`` items run at once in a process, whatever
  is queued: interactive calls keep the rest of ``max_in_flight``.
- **Rate limits.** Each item is one request of its owner's budget when it runs; a 429 or a full
  capacity gate is waited out (``Retry-After``) and the item tried again, as the offline batch does.
- **Cancel.** Every ``_POLL`` seconds the runner reads the state of the jobs it runs items of;
  a cancelled job's running calls are cancelled and their items recorded as cancelled.
- **Restarts.** Items still running at shutdown go back to the queue; a process that died
  leaves its claims to expire (``job_lease``), then another process claims them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from dspy_serve.errors import (
    InvalidInput,
    JobCancelled,
    Overloaded,
    RateLimited,
    ServeError,
    ServiceUnavailable,
    Unauthorized,
)
from dspy_serve.jobs.webhook import deliver
from dspy_serve.serving import pricing
from dspy_serve.serving.call import CallOptions
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.keys import KeyRing
from dspy_serve.serving.schema import field_values
from dspy_serve.serving.usage import total_tokens
from dspy_serve.store import Store, store_url
from dspy_serve.store.jobs import (
    ClaimedItem,
    claim_items,
    finish_item,
    get_job,
    job_states,
    release_items,
    remove_expired,
    renew_leases,
)

if TYPE_CHECKING:
    from dspy_serve.serving.service import Service

__all__ = ["JobRunner"]

logger = logging.getLogger("dspy_serve")

_POLL = 0.5  # seconds between two looks for work, and for cancelled jobs
_SWEEP = 60.0  # seconds between two retention passes
_RETRIES = (RateLimited, Overloaded)


class JobRunner:
    """Runs job items in the background while the app lives (``start``/``stop`` in its lifespan)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._keys = KeyRing.from_settings(self.settings)
        self._store: Store | None = None
        self._running: dict[int, tuple[str, asyncio.Task[None]]] = {}  # item id -> (job id, task)
        self._cancelled: set[int] = set()
        self._call_ids: dict[int, str] = {}  # item id -> the call running it now
        self._jobs: dict[str, dict[str, Any]] = {}  # the jobs items run for (program, owner, options)
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the job runner is not started")
        return self._store

    async def start(self) -> None:
        self._store = await Store.open(store_url(self.settings), busy_timeout=self.settings.store_timeout)
        self._loops = [asyncio.create_task(self._claim_forever()), asyncio.create_task(self._watch_forever())]
        self._loops.append(asyncio.create_task(self._sweep_forever()))
        logger.info("jobs: on, %d items at once in this worker", self.settings.job_concurrency)

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        running = [task for _, task in self._running.values()]
        # Webhooks still retrying are dropped too: a shutdown waits for no remote server.
        for task in [*running, *self._background]:
            task.cancel()
        for task in [*self._loops, *running, *self._background]:
            with contextlib.suppress(BaseException):
                await task
        if self._store is not None:
            with contextlib.suppress(Exception), anyio.fail_after(self.settings.store_timeout):
                released = await release_items(self._store, self.worker)
                if released:
                    logger.info("jobs: %d running items handed back to the queue", released)
            await self._store.close()
            self._store = None

    def wake(self) -> None:
        """A job was submitted here: look for work now rather than at the next poll."""
        self._wake.set()

    # --- the loops ------------------------------------------------------------------------------
    async def _claim_forever(self) -> None:
        while True:
            free = self.settings.job_concurrency - len(self._running)
            claimed: list[ClaimedItem] = []
            if free > 0 and self.service.ready:
                try:
                    claimed = await claim_items(
                        self.store, self.worker, free, lease_s=self.settings.job_lease
                    )
                except Exception as exc:
                    logger.warning("jobs: claiming items failed (%s); retrying", type(exc).__name__)
            for item in claimed:
                task = asyncio.create_task(self._run(item))
                self._running[item.id] = (item.job_id, task)
                task.add_done_callback(functools.partial(self._done, item.id))
            if len(claimed) < free or free <= 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL)

    def _done(self, item_id: int, _: object = None) -> None:
        self._running.pop(item_id, None)
        self._call_ids.pop(item_id, None)
        self._cancelled.discard(item_id)
        self._wake.set()

    async def _watch_forever(self) -> None:
        """Cancel the items of cancelled jobs; renew the leases of the rest."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(_POLL)
            try:
                states = await job_states(self.store, sorted({job for job, _ in self._running.values()}))
                for item_id, (job_id, task) in list(self._running.items()):
                    if states.get(job_id, "cancelled") == "cancelled" and item_id not in self._cancelled:
                        self._cancelled.add(item_id)
                        task.cancel()
                if time.monotonic() - renewed > self.settings.job_lease / 3:
                    await renew_leases(self.store, self.worker, list(self._running))
                    renewed = time.monotonic()
            except Exception as exc:
                logger.warning("jobs: watching running items failed (%s); retrying", type(exc).__name__)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                removed = await remove_expired(self.store)
                if removed:
                    logger.info("jobs: %d expired jobs removed with their results", removed)
            except Exception as exc:
                logger.warning("jobs: retention pass failed (%s)", type(exc).__name__)
            await asyncio.sleep(_SWEEP)

    # --- one item -------------------------------------------------------------------------------
    async def _run(self, item: ClaimedItem) -> None:
        result: dict[str, Any]
        try:
            state, result, call_id = await self._call(await self._job(item.job_id), item)
        except asyncio.CancelledError:
            if item.id not in self._cancelled:
                raise  # the server stops: stop() hands the item back to the queue
            state, call_id = "cancelled", self._call_ids.get(item.id)
            result = {"error": JobCancelled("The job was cancelled while this item ran.").problem()}
        except Exception as exc:  # the store failed us: the lease expires and the item is run again
            logger.warning(
                "jobs: item %d of job %s failed (%s)", item.position, item.job_id, type(exc).__name__
            )
            return
        usage = result.get("usage") or {}
        cost = (result.get("cost") or {}).get("total_usd")
        try:
            ended = await finish_item(
                self.store,
                self.worker,
                item,
                state=state,
                result=result,
                call_id=call_id,
                tokens=total_tokens(usage),
                cost_usd=cost,
                retention_s=self.settings.job_retention,
            )
        except Exception as exc:  # not recorded: the lease expires and the item is run again
            logger.warning("jobs: the result of item %d of job %s was not written (%s)",
                           item.position, item.job_id, type(exc).__name__)  # fmt: skip
            return
        if ended is not None and ended.get("webhook"):
            self._in_background(deliver(self.settings, ended))

    async def _call(self, job: dict[str, Any], item: ClaimedItem) -> tuple[str, dict[str, Any], str | None]:
        """Run the item (waiting out rate limits and a full gate): its state, result and call id."""
        program = self.service.programs.get(job["program"])
        caller = Caller(address="job", request_id=f"job-{job['id']}-{item.position}")
        if job["key_name"] is not None:
            caller.api_key = self._keys.named(job["key_name"]) if self._keys is not None else None
            if caller.api_key is None:
                error = Unauthorized("The API key that submitted this job is no longer configured.")
                return "failed", {"error": error.problem()}, None
        options = CallOptions(**job["options"])
        if program is None:
            return (
                "failed",
                {"error": ServeError(f"The program {job['program']!r} is not served.").problem()},
                None,
            )
        try:  # stored as JSON: back to the objects the program takes (nested models, images)
            inputs = field_values(program.interface.inputs.model_validate(item.inputs))
        except ValidationError as exc:
            errors = [
                {"loc": ["items", item.position, *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ]
            return "failed", {"error": InvalidInput("Invalid input", errors=errors).problem()}, None
        while True:
            call = self.service.call(caller, program, inputs, options, wire="job")
            self._call_ids[item.id] = call.call_id
            try:
                done = await call.result()
            except _RETRIES as error:
                await asyncio.sleep(min(max(error.retry_after or 1.0, 0.1), 60.0))
                continue
            except ServeError as error:
                if isinstance(error, ServiceUnavailable) and not self.service.ready:
                    await asyncio.Event().wait()  # stopping: stop() cancels this and requeues the item
                usage = error.usage or {}
                return (
                    "failed",
                    {"error": error.problem(), "usage": usage, "cost": pricing.estimate(usage)},
                    call.call_id,
                )
            return "done", {"outputs": done.outputs, "usage": done.usage, "cost": done.cost}, call.call_id

    async def _job(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            job = await get_job(self.store, job_id)
            if job is None:
                raise LookupError(job_id)
            if len(self._jobs) > 1000:  # a cache of the jobs being run, not a record of them
                self._jobs.clear()
            self._jobs[job_id] = job
        return job

    def _in_background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
