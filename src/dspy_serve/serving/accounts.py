"""What every call that ran owes, settled the same way on every path (invoke, batch, stream).

Before the program runs, its scope gets the caller's token budget, from which each of its LM
calls holds what it may spend (:mod:`dspy_serve.lm.budget`); when it has run, its outputs are
checked against what it declared, then priced; whatever the outcome (finished, failed after
spending, timed out, left by its client), what it spent is charged. (It is counted by the
metrics from the call's published record.) A reused answer (cache, coalescing) never reaches
here: it spent nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anyio
import dspy
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from dspy_serve.call_scope import CallScope
from dspy_serve.errors import InvalidProgramOutput, ServeError
from dspy_serve.serving import pricing
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.front_door import FrontDoor
from dspy_serve.serving.programs import Program
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.streaming import well_formed

__all__ = ["CallAccounts"]

logger = logging.getLogger("dspy_serve")

# Seconds the token charge of a call may take past its deadline (a call that timed out pays too).
_SETTLE_AT_LEAST = 0.25


class CallAccounts:
    def __init__(self, front_door: FrontDoor, max_tokens_limit: int) -> None:
        self._front_door = front_door
        self._max_tokens_limit = max_tokens_limit

    async def reserve(self, caller: Caller, lm: dspy.BaseLM, scope: CallScope) -> int:
        """Give the call's LM calls the caller's token budget: each reserves its own estimate
        before it is sent (:mod:`dspy_serve.lm.budget`). Nothing is held for the call as a whole."""
        scope.budget = self._front_door.token_budget(caller, self._max_tokens_limit)
        return 0

    def finish(self, program: Program, result: CallResult) -> CallResult:
        """Never return what the program did not declare: validate the outputs against the
        schema; then price the call. (Its tokens are charged by :meth:`settle`, whatever the
        outcome.)"""
        try:
            validated = program.interface.outputs.model_validate(result.outputs)
            outputs = _well_formed_data(validated.model_dump(mode="json"))
        except (ValidationError, PydanticSerializationError) as exc:
            # The tokens were spent: report them with the error.
            error = InvalidProgramOutput(
                "The program's outputs do not match its declared output types.", errors=_output_errors(exc)
            )
            error.usage = result.usage
            raise error from exc
        return dataclasses.replace(result, outputs=outputs, cost=pricing.estimate(result.usage))

    async def settle(self, caller: Caller, reserved: int, scope: CallScope) -> None:
        """Charge what the call spent, whatever its outcome: the runner leaves the usage on the
        scope."""
        cost = pricing.estimate(scope.usage) if scope.usage else {}
        # Shielded: a cancelled request (client gone, deadline passed) still pays; the storage
        # calls are bounded by what is left of the deadline, and never less than a moment.
        with anyio.CancelScope(shield=True):
            try:
                await self._front_door.settle(
                    caller, scope.budget, scope.usage, cost, within=max(scope.remaining(), _SETTLE_AT_LEAST)
                )
            except ServeError as exc:  # the storage failed: the call's own outcome stands
                logger.warning("the tokens of a call could not be charged: %s", exc.detail)


def _output_errors(exc: ValidationError | PydanticSerializationError) -> list[dict[str, Any]]:
    if isinstance(exc, PydanticSerializationError):
        return [{"loc": ["outputs"], "msg": "a value is not JSON-serializable", "type": "serialization"}]
    return [
        {"loc": ["outputs", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _well_formed_data(value: Any) -> Any:
    """JSON data whose strings can all be encoded: an LM's lone surrogate becomes U+FFFD."""
    if isinstance(value, str):
        return well_formed(value)
    if isinstance(value, list):
        return [_well_formed_data(item) for item in value]
    if isinstance(value, dict):
        return {well_formed(key): _well_formed_data(item) for key, item in value.items()}
    return value
