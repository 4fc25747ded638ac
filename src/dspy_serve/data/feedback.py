"""Feedback on a call: who may give it, what a correction must look like, and where it goes.

A call is found in the capture's recent calls (then stored first, if it was not yet or was
not sampled) or in the store. A key rates only its own calls; a feedback token rates the one
call it names. Each (call, key) has one current rating; what it replaces is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from dspy_serve.data.capture import Capture
from dspy_serve.errors import CallNotFound, Forbidden, InvalidInput, StoreUnavailable
from dspy_serve.serving.programs import Program
from dspy_serve.store.calls import get_call
from dspy_serve.store.feedback import upsert_feedback

__all__ = ["Rating", "give_feedback", "validate_correction"]


@dataclass(frozen=True)
class Rating:
    call_id: str
    score: bool | float | None = None
    outputs: Mapping[str, Any] | None = None
    comment: str | None = None


def validate_correction(
    program: Program, correction: Mapping[str, Any], served: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The corrected outputs as JSON, checked against the program's output schema: the fields
    given replace the served ones; a failed call's correction must give them all. 422 names the field."""
    model = program.interface.outputs
    unknown = [name for name in correction if name not in model.model_fields]
    if unknown:
        raise InvalidInput(
            f"Not an output of {program.name}: {', '.join(unknown)}.",
            errors=[
                {"loc": ["body", "outputs", name], "msg": "not an output field", "type": "extra_forbidden"}
                for name in unknown
            ],
        )
    try:
        validated = model.model_validate({**(served or {}), **correction})
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "outputs", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
            if served is None or (err["loc"] and err["loc"][0] in correction)
        ]
        if errors:
            raise InvalidInput("The correction does not fit the program's outputs.", errors=errors) from None
        validated = model.model_construct(**{**(served or {}), **correction})
    dumped = validated.model_dump(mode="json")
    return {name: dumped[name] for name in correction}


async def give_feedback(
    capture: Capture, program: Program, rating: Rating, *, key_name: str | None, token_call: str | None
) -> bool:
    """Record ``rating``; True when it replaced earlier feedback of the same key. ``token_call``
    is the call a verified feedback token names (its holder acts for the call's own key)."""
    if rating.score is None and rating.outputs is None and rating.comment is None:
        raise InvalidInput(
            "Give a score, corrected outputs or a comment.",
            errors=[{"loc": ["body"], "msg": "give score, outputs or comment", "type": "missing"}],
        )
    if token_call is not None and token_call != rating.call_id:
        raise Forbidden("This feedback token is for another call.")
    recent = capture.recent.get(rating.call_id)
    try:
        if recent is not None and recent.program == program.name:
            owner, served = recent.key_name, recent.outputs
            _check_owner(owner, key_name, token_call)
            correction = _correction(program, rating, served)
            if not await capture.persist(recent):
                raise CallNotFound(f"Call {rating.call_id} is not kept (the redaction hook dropped it).")
        else:
            with anyio.fail_after(capture.deadline):
                row = await get_call(await capture.store(), rating.call_id)
            if row is None or row["program"] != program.name:
                raise CallNotFound(f"No call {rating.call_id} of {program.name} is known (or it expired).")
            owner, served = row["key_name"], row["outputs"]
            _check_owner(owner, key_name, token_call)
            correction = _correction(program, rating, served)
        score = float(rating.score) if rating.score is not None else None
        with anyio.fail_after(capture.deadline):
            return await upsert_feedback(
                await capture.store(),
                rating.call_id,
                owner or "",
                score=score,
                outputs=correction,
                comment=rating.comment,
            )
    except (SQLAlchemyError, OSError, TimeoutError):
        raise StoreUnavailable("The store did not answer: try again.", retry_after=1) from None


def _check_owner(owner: str | None, key_name: str | None, token_call: str | None) -> None:
    if token_call is None and owner != key_name:
        raise Forbidden("An API key may rate only its own calls.")


def _correction(program: Program, rating: Rating, served: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if rating.outputs is None:
        return None
    return validate_correction(program, rating.outputs, served)
