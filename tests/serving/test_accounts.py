"""CallAccounts on a real in-memory token budget: outputs are checked before they are priced, and
what a call spent is charged in place of its reservation, whatever its outcome. (The metrics
count a call from its published record: tests/serving/test_call.py.)"""

from __future__ import annotations

import logging
from typing import Any

import dspy
import pytest

from dspy_serve.call_scope import CallScope
from dspy_serve.errors import InvalidProgramOutput, RateLimited
from dspy_serve.serving.accounts import CallAccounts
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.front_door import FrontDoor
from dspy_serve.serving.loader import LoadedProgram
from dspy_serve.serving.programs import Program
from dspy_serve.serving.ratelimit import RateLimiter
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.schema import derive_interface
from dspy_serve.settings import ServeSettings

MODEL = "openai/gpt-4o-mini"


class Answer(dspy.Signature):
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    confidence: float = dspy.OutputField()


def program() -> Program:
    module = dspy.Predict(Answer)
    interface = derive_interface("qa", module, None, max_input_chars=10_000)
    return Program(LoadedProgram(name="qa", target="test", module=module, artifact=None), interface)


def accounts(token_rate_limit: str | None = "1000/minute") -> tuple[CallAccounts, RateLimiter]:
    settings = ServeSettings(model=MODEL, token_rate_limit=token_rate_limit, max_tokens_limit=400)
    limiter = RateLimiter(settings)
    return CallAccounts(FrontDoor(limiter), settings.max_tokens_limit), limiter


def result(outputs: dict[str, Any], total_tokens: int = 30) -> CallResult:
    usage = {
        MODEL: {"prompt_tokens": total_tokens - 10, "completion_tokens": 10, "total_tokens": total_tokens}
    }
    return CallResult(outputs=outputs, usage=usage, model=MODEL, lm_calls={MODEL: 1})


def test_declared_outputs_are_returned_as_json_with_their_price() -> None:
    books, _ = accounts()
    finished = books.finish(program(), result({"answer": "Paris \ud800", "confidence": "0.9"}))
    assert finished.outputs == {"answer": "Paris \ufffd", "confidence": 0.9}, "typed, and encodable"
    assert finished.cost["total_usd"] > 0


def test_undeclared_outputs_are_refused_by_field_yet_their_tokens_are_reported() -> None:
    books, _ = accounts()
    with pytest.raises(InvalidProgramOutput) as refused:
        books.finish(program(), result({"answer": "Paris", "confidence": "very"}))
    assert [error["loc"] for error in refused.value.errors or []] == [["outputs", "confidence"]]
    assert refused.value.usage is not None and refused.value.usage[MODEL]["total_tokens"] == 30


async def test_a_reservation_is_replaced_by_what_the_call_spent() -> None:
    books, _ = accounts("500/minute")
    lm = dspy.LM(MODEL, max_tokens=300)
    caller = Caller("10.0.0.1")
    scope = CallScope.starting_now(10)
    held = await books.reserve(caller, lm, scope)
    assert held == 300, "the most one LM call may spend"
    scope.usage = result({}, total_tokens=120).usage
    await books.settle(caller, held, scope)
    # A call is refused once the budget is spent. 120 spent, not 300: two more calls start (the
    # second sees 420 of 500), and only then is the budget spent.
    assert [await books.reserve(caller, lm, scope) for _ in range(2)] == [300, 300]
    with pytest.raises(RateLimited):
        await books.reserve(caller, lm, scope)


async def test_without_max_tokens_a_call_holds_the_servers_limit() -> None:
    books, _ = accounts("1000/minute")
    unbounded = dspy.LM(MODEL)
    unbounded.kwargs.pop("max_tokens", None)
    assert await books.reserve(Caller("10.0.0.4"), unbounded, CallScope.starting_now(10)) == 400


async def test_a_call_that_spent_nothing_gives_its_whole_reservation_back() -> None:
    books, _ = accounts("500/minute")
    lm = dspy.LM(MODEL, max_tokens=300)
    caller, scope = Caller("10.0.0.2"), CallScope.starting_now(10)
    await books.settle(caller, await books.reserve(caller, lm, scope), scope)  # failed before any LM call
    assert await books.reserve(caller, lm, scope) == 300, "the budget is whole again"


async def test_a_storage_failure_while_charging_is_logged_and_the_calls_outcome_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    books, limiter = accounts("1000/minute")

    async def unavailable(*args: object, **kwargs: object) -> int:
        raise ConnectionError("storage down")

    caller, scope = Caller("10.0.0.3"), CallScope.starting_now(10)
    reserved = await books.reserve(caller, dspy.LM(MODEL, max_tokens=100), scope)
    limiter._storage.incr = unavailable  # type: ignore[method-assign]  # the storage, not our code
    scope.usage = result({}).usage
    with caplog.at_level(logging.WARNING, logger="dspy_serve"):
        await books.settle(caller, reserved, scope)
    assert "could not be charged" in caplog.text
