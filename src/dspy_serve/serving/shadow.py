"""Shadow runs: the candidate also answers a sampled share of calls, and nobody waits for it.

A shadow run is a :class:`~.call.Call` of its own (its own ``call_id``, ``wire="shadow"`` and
``shadow_of`` naming the served call), run in the background on the served call's admission:
same inputs, same model and options. Its answer is published like any call's (capture records
it, the metrics count it under ``role="shadow"``), never returned. It takes no caller's capacity
slot and charges no caller's tokens; instead at most ``shadow_max_in_flight`` run at once, and
none starts while the server is at capacity: a shadow run is skipped (and counted), never
queued, so it cannot delay or fail a caller's answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from dspy_serve.serving.caller import Caller
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.versions import ProgramVersion

if TYPE_CHECKING:
    from dspy_serve.serving.call import Admission, Call
    from dspy_serve.serving.service import Service

__all__ = ["ShadowRuns"]

logger = logging.getLogger("dspy_serve")


class ShadowRuns:
    def __init__(self, service: Service, limit: int, metrics: Metrics) -> None:
        self._service = service
        self._limit = limit
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, served: Call, version: ProgramVersion, admission: Admission) -> None:
        """Run ``served``'s inputs on ``version`` in the background, if there is room."""
        from dspy_serve.serving.call import Call  # the call module starts shadows: imported late

        capacity = self._service.capacity
        busy = capacity is not None and capacity.running >= capacity.limit
        if busy or len(self._tasks) >= self._limit or version.runner is None:
            self._metrics.shadow_skipped.labels(served.program.name).inc()
            return
        caller = Caller(
            address=served.caller.address, request_id=served.caller.request_id, api_key=served.caller.api_key
        )
        shadow = Call(
            self._service,
            caller,
            served.program,
            served.inputs,
            dataclasses.replace(served.options, trace=False, prompts=False),
            wire="shadow",
            admission=admission,
            version=version,
            shadow_of=served.call_id,
        )
        task = asyncio.get_running_loop().create_task(self._run(shadow), name=f"shadow-{shadow.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: Call) -> None:
        try:
            await call.result()
        except asyncio.CancelledError:
            raise
        except Exception:  # already published as a failed call: the comparison counts it
            logger.debug("shadow run %s of %s failed", call.call_id, call.shadow_of)

    async def aclose(self) -> None:
        """Cancel the shadow runs still going (the server stops: their answers are not needed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
