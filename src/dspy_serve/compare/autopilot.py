"""The automatic rollout policy, run in the server: every ``rollout_check_interval`` seconds,
each program in a rollout is compared (stable against its candidate, over the calls since the
rollout last changed) and :func:`~.policy.policy_action` decides: roll back a ``worse``
candidate (``auto_rollback``, on by default), promote a ``better`` one (``auto_promote``, off).

Every worker runs it; the rollout's compare-and-set lets one of them act, and the others
follow the change. It needs the captured calls: a program that is not captured is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from dspy_serve.compare.policy import policy_action
from dspy_serve.compare.report import compare_report
from dspy_serve.errors import RolloutConflict
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import Service

__all__ = ["check_rollout", "running_autopilot"]

logger = logging.getLogger("dspy_serve")


async def check_rollout(service: Service, program: Program) -> str | None:
    """Compare ``program``'s candidate with its stable version now, and act as the policy says;
    what was done, or None."""
    settings, store, rollout = service.settings, service.versions.store, program.rollout
    if store is None or rollout.candidate is None or not _captured(service, program.name):
        return None
    report = await compare_report(
        store,
        program.name,
        since=rollout.changed_at,
        stable=rollout.stable,
        candidate=rollout.candidate,
        min_sample=settings.compare_min_sample,
    )
    action = policy_action(
        report,
        candidate=program.rollout.candidate,
        auto_rollback=settings.auto_rollback,
        auto_promote=settings.auto_promote,
    )
    if action.action is None or program.rollout.revision != rollout.revision:
        return None
    try:
        if action.action == "rollback":
            await service.versions.rollback(program)
        else:
            await service.versions.promote(program, rollout.candidate)
    except RolloutConflict:
        return None  # another worker acted first, or an operator did
    done = f"{program.name}: automatic {action.action} of {rollout.candidate}: {action.reason}"
    logger.warning("%s", done)
    return done


def _captured(service: Service, name: str) -> bool:
    capture = service.settings.capture
    return "*" in capture or name in capture


@contextlib.asynccontextmanager
async def running_autopilot(service: Service) -> AsyncIterator[None]:
    """Check every program's rollout every ``rollout_check_interval`` seconds while serving."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(service.settings.rollout_check_interval)
            for program in list(service.programs.values()):
                started = time.monotonic()
                try:
                    await check_rollout(service, program)
                except Exception as exc:  # the store is down, say: serve on, try again next time
                    logger.warning("%s: the rollout check failed: %s", program.name, type(exc).__name__)
                logger.debug("%s: rollout checked in %.3f s", program.name, time.monotonic() - started)

    task = asyncio.get_running_loop().create_task(loop(), name="rollout-autopilot")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
