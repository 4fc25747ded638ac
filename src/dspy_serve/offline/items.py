"""How one row runs: in this process through the service's one call path, or against a
served program through :class:`~dspy_serve.Client`. Both give the same output lines."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from dspy_serve.client import Client
from dspy_serve.errors import InvalidInput, ServeError, from_exception
from dspy_serve.offline.rows import Row
from dspy_serve.offline.runner import ItemOutcome
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import CallOptions, Service

__all__ = ["InProcessItems", "RemoteItems"]

# A row refused for a while (a rate limit, a full queue) waits and tries again: an offline run
# is there to get through the file, within the limits the operator set, not to fail on them.
_WAITS = 20
_MAX_WAIT_S = 60.0


def _unreadable(row: Row) -> ItemOutcome:
    error = InvalidInput(
        row.problem or "unreadable row", errors=[{"loc": ["row", row.index], "msg": row.problem}]
    )
    return ItemOutcome(error=error.problem())


def _failed(error: ServeError) -> ItemOutcome:
    return ItemOutcome(error=error.problem(), usage=error.usage or {})


async def _waiting(attempt: int, error: ServeError) -> bool:
    """Sleep out a refusal that says when to come back; False when it should not be retried."""
    if error.retry_after is None or error.status not in (429, 503) or attempt >= _WAITS:
        return False
    await asyncio.sleep(min(error.retry_after, _MAX_WAIT_S))
    return True


class InProcessItems:
    """Rows run by a started :class:`Service`: keys aside, exactly what ``run`` would do."""

    def __init__(self, service: Service, program: Program, options: CallOptions) -> None:
        self.service, self.program, self.options = service, program, options

    async def __call__(self, row: Row) -> ItemOutcome:
        if row.inputs is None:
            return _unreadable(row)
        try:
            inputs = self.program.interface.validate_inputs(row.inputs, "Invalid input")
        except ServeError as error:
            return _failed(error)
        attempt = 0
        while True:
            # Each try is a call of its own: admitted, run and published through the one call path.
            call = self.service.call(Caller(address="batch"), self.program, inputs, self.options, wire="file")
            try:
                result = await call.result()
            except Exception as exc:
                refused = from_exception(exc)
                attempt += 1
                if await _waiting(attempt, refused):
                    continue
                return replace(_failed(refused), call_id=call.call_id)
            return ItemOutcome(
                outputs=result.outputs, usage=result.usage, cost=result.cost, call_id=call.call_id
            )


class RemoteItems:
    """Rows sent to ``/NAME/invoke`` of a served program; its keys and limits apply."""

    def __init__(self, client: Client, name: str, options: dict[str, Any]) -> None:
        self.client, self.name, self.options = client, name, options

    async def __call__(self, row: Row) -> ItemOutcome:
        if row.inputs is None:
            return _unreadable(row)
        body: dict[str, Any] = {"inputs": row.inputs}
        if self.options:
            body["options"] = self.options
        attempt = 0
        while True:
            try:
                answer = await self.client.apost(f"/{self.name}/invoke", body)
            except ServeError as error:
                attempt += 1
                if await _waiting(attempt, error):
                    continue
                return _failed(error)
            return ItemOutcome(
                outputs=answer.get("outputs"),
                usage=answer.get("usage") or {},
                cost=answer.get("cost") or {},
                call_id=answer.get("call_id"),
            )
