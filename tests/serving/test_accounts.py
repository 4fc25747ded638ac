"""CallAccounts on a real in-memory token budget: outputs are checked before they are priced, and
what a call spent is charged, whatever its outcome, by its LM calls and by the call at its end.
(The metrics count a call from its published record: tests/serving/test_call.py.)"""

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
    return Program.of(LoadedProgram(name="qa", target="test", module=module, artifact=None), interface)


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


async def test_each_lm_call_reserves_from_the_calls_budget_and_the_rest_is_charged_at_the_end() -> None:
    books, _ = accounts("500/minute")
    caller = Caller("10.0.0.1")
    scope = CallScope.starting_now(10)
    assert await books.reserve(caller, dspy.LM(MODEL, max_tokens=300), scope) == 0, "nothing held per call"
    budget = scope.budget
    assert budget is not None and budget.default_max_tokens == 400, "the server's max_tokens_limit"
    # An LM call holds its estimate, then settles what it spent (lm/budget.py does both).
    held = await budget.reserve(300, within=1)
    await budget.settle(held, 100, within=1)
    assert await budget.reserve(400, within=1) == 400, "100 spent: 400 more fit in 500"
    with pytest.raises(RateLimited):
        await budget.reserve(1, within=1)  # 500 spent or held: nothing more fits
    await budget.settle(400, 0, within=1)
    # The call ends having spent 120 in all: the 20 its LM calls did not settle are charged now.
    scope.usage = result({}, total_tokens=120).usage
    await books.settle(caller, 0, scope)
    assert await budget.reserve(380, within=1) == 380, "120 charged, not 220"
    with pytest.raises(RateLimited):
        await budget.reserve(1, within=1)


async def test_the_first_lm_call_of_a_window_always_fits() -> None:
    """A budget smaller than one call's estimate serves one call per window, not none ever."""
    books, _ = accounts("100/minute")
    scope = CallScope.starting_now(10)
    await books.reserve(Caller("10.0.0.4"), dspy.LM(MODEL), scope)
    assert scope.budget is not None
    assert await scope.budget.reserve(1000, within=1) == 1000
    with pytest.raises(RateLimited):
        await scope.budget.reserve(1, within=1)


async def test_without_a_token_budget_the_scope_gets_none() -> None:
    books, _ = accounts(None)
    scope = CallScope.starting_now(10)
    await books.reserve(Caller("10.0.0.2"), dspy.LM(MODEL), scope)
    assert scope.budget is None


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
