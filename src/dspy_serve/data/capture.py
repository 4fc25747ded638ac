"""Capture: finished calls of the chosen programs, sampled, queued, and written to the store in
batches by a background task. Never on the request path: :meth:`Capture.observe` only puts the
record into a bounded queue; a full queue, a slow store or a store that is down drops rows (and
counts them), and a dropped row is never retried.

The writer lets rows gather for :data:`BATCH_SECONDS` before it writes them: a batch costs a
transaction, a thread hop to build its rows and a few to the database (~0.7 ms of CPU with
aiosqlite), a row ~25 us all told. Written as they came (a few rows per batch at 900 calls/s),
capture cost 7-13 % of the server's throughput; gathered, 2-3 % (docs/benchmarks.md, capture).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import anyio
from prometheus_client import Counter
from sqlalchemy.engine import make_url

from dspy_serve.data.recent import RecentCalls
from dspy_serve.data.rows import RowMaker, load_redactor
from dspy_serve.errors import StoreUnavailable
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.observers import FinishedCall
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from dspy_serve.store.calls import EncodedCall, encode_calls, insert_calls, insert_encoded, prune_calls

__all__ = ["Capture", "is_sampled"]

logger = logging.getLogger("dspy_serve")

BATCH_ROWS = 500
# Seconds rows gather before a batch is written (less when a batch is waiting, or at stop).
BATCH_SECONDS = 0.5
# After the store failed to open, rows are dropped at once for this long before trying again.
_REOPEN_AFTER = 5.0
# Seconds the rows still queued at shutdown get to be written.
_FLUSH_SECONDS = 5.0


def is_sampled(call_id: str, rate: float) -> bool:
    """Whether a call is captured: a hash of its id, so every worker decides alike."""
    if rate >= 1:
        return True
    digest = hashlib.blake2b(call_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class Capture:
    """The capture observer of one service (register it with ``service.observers.add``)."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.url = store_url(settings)
        self.rows = RowMaker(settings, load_redactor(settings.capture_redact))
        self.recent = RecentCalls(settings.capture_recent)
        self._everything = "*" in settings.capture
        self._programs = frozenset(settings.capture)
        self._queue: asyncio.Queue[FinishedCall] = asyncio.Queue(settings.capture_queue)
        # Ends the writer's wait for a batch: a batch is queued, or the capture is stopping. A
        # batch is BATCH_ROWS, or half the queue when it is smaller: it never fills while waiting.
        self._wake = asyncio.Event()
        self._batch = min(BATCH_ROWS, max(1, settings.capture_queue // 2))
        self._stopping = False
        self._store: Store | None = None
        self._opening = asyncio.Lock()
        self._failed_at = -_REOPEN_AFTER
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        own = None if metrics.multiprocess_dir is not None else metrics.registry
        self.counted = Counter(
            "dspy_serve_capture_rows",
            "Captured calls by result: written, dropped (queue full, store slow or down) or redacted.",
            ["result", "reason"],
            registry=own,
        )

    @classmethod
    def of(cls, settings: ServeSettings, metrics: Metrics) -> Capture | None:
        """The service's capture, or None when capture is off."""
        return cls(settings, metrics) if settings.capture else None

    @property
    def deadline(self) -> float:
        """The last resort past the store's own timeouts (SQLite's busy_timeout is store_timeout):
        cancelling a database call midway is what this avoids where it can."""
        return self.settings.store_timeout * 2 + 1

    def captures(self, program: str) -> bool:
        return self._everything or program in self._programs

    # --- the observer (on the event loop, must not block) -----------------------------------
    def observe(self, call: FinishedCall) -> None:
        if not self.captures(call.program):
            return
        self.recent.add(call)
        # A shadow run is kept exactly when the call it shadowed is: the pair is compared together.
        if not is_sampled(call.shadow_of or call.call_id, self.settings.capture_rate):
            return
        loop = self._loop
        if loop is not None and _running_loop() is not loop:  # published from a worker thread
            loop.call_soon_threadsafe(self._enqueue, call)
        else:
            self._enqueue(call)

    def _enqueue(self, call: FinishedCall) -> None:
        try:
            self._queue.put_nowait(call)
        except asyncio.QueueFull:
            self.counted.labels("dropped", "queue_full").inc()
            return
        if self._queue.qsize() >= self._batch:
            self._wake.set()

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._wake.clear()
        settings = self.settings
        logger.info(
            "capture: on for %s (rate %g%s) into %s",
            "every program" if self._everything else ", ".join(sorted(self._programs)),
            settings.capture_rate,
            ", traces kept" if settings.capture_trace else "",
            make_url(self.url).render_as_string(hide_password=True),
        )
        with contextlib.suppress(StoreUnavailable):  # logged; rows are dropped until it answers
            await self.store()
        self._tasks = [asyncio.create_task(self._write_forever()), asyncio.create_task(self._prune_forever())]

    async def stop(self) -> None:
        """Write what is queued (for a few seconds at most), then close the store."""
        self._stopping = True
        self._wake.set()
        if self._tasks and not self._tasks[0].done():
            with anyio.move_on_after(_FLUSH_SECONDS):
                await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def store(self) -> Store:
        """The store, opened (and migrated) on first use; StoreUnavailable while it does not answer."""
        if self._store is not None:
            return self._store
        async with self._opening:
            if self._store is not None:
                return self._store
            if time.monotonic() - self._failed_at < _REOPEN_AFTER:
                raise StoreUnavailable("The store is not answering.", retry_after=_REOPEN_AFTER)
            try:
                with anyio.fail_after(self.deadline):
                    self._store = await Store.open(self.url, busy_timeout=self.settings.store_timeout)
            except Exception as exc:
                self._failed_at = time.monotonic()
                logger.error("the store is unavailable (%s): captured calls are dropped", type(exc).__name__)
                raise StoreUnavailable("The store is not answering.", retry_after=_REOPEN_AFTER) from None
            return self._store

    # --- background work --------------------------------------------------------------------
    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather()
            while len(batch) < BATCH_ROWS and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _gather(self) -> None:
        """Wait up to :data:`BATCH_SECONDS` for more rows: one batch instead of many small ones."""
        if self._queue.qsize() < self._batch - 1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BATCH_SECONDS)
        if not self._stopping:
            self._wake.clear()

    async def write(self, calls: list[FinishedCall]) -> None:
        """Write one batch: rows dropped on any failure, never retried."""
        try:
            # The redaction hook is the operator's code: it runs off the event loop, and so does
            # all the per-row work (JSON included), leaving the loop one executemany to await.
            encoded, redacted = await anyio.to_thread.run_sync(self._encode, calls)
        except Exception as exc:
            logger.error(
                "the capture_redact hook failed (%s): %d rows dropped", type(exc).__name__, len(calls)
            )
            self.counted.labels("dropped", "redaction_error").inc(len(calls))
            return
        if redacted:
            self.counted.labels("redacted", "hook").inc(redacted)
        if not encoded:
            return
        try:
            with anyio.fail_after(self.deadline):
                await insert_encoded(await self.store(), encoded)
        except Exception as exc:
            reason = "store_timeout" if isinstance(exc, TimeoutError) else "store_error"
            logger.warning("captured calls dropped: %d (%s, %s)", len(encoded), reason, type(exc).__name__)
            self.counted.labels("dropped", reason).inc(len(encoded))
            return
        self.counted.labels("written", "").inc(len(encoded))

    def _encode(self, calls: list[FinishedCall]) -> tuple[list[EncodedCall], int]:
        """The batch's rows as the driver takes them, and how many the redaction hook dropped."""
        rows = [row for row in (self.rows.row(call, sampled=True) for call in calls) if row is not None]
        return encode_calls(rows), len(calls) - len(rows)

    async def _prune_forever(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(self.settings.capture_prune_interval)

    async def prune(self) -> int:
        """Retention: delete calls past the age and row limits. Returns how many went."""
        days = self.settings.capture_max_age_days
        try:
            store = await self.store()
            removed = await prune_calls(
                store,
                max_age_s=days * 86400 if days is not None else None,
                max_rows=self.settings.capture_max_rows,
            )
        except Exception as exc:
            logger.warning("retention pass failed (%s); the next one retries", type(exc).__name__)
            return 0
        if removed:
            logger.info("retention: %d captured calls deleted", removed)
        return removed

    async def persist(self, call: FinishedCall) -> bool:
        """Store one call now (feedback came for it before its row was written, or it was not
        sampled); returns False when the redaction hook drops it."""
        row = await anyio.to_thread.run_sync(
            lambda: self.rows.row(call, sampled=is_sampled(call.call_id, self.settings.capture_rate))
        )
        if row is None:
            return False
        with anyio.fail_after(self.deadline):
            await insert_calls(await self.store(), [row])
        return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
