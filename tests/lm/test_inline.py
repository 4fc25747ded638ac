"""The server's LM path skips DSPy's worker-thread hops, and changes nothing else.

Each program runs twice on the same fake LM: once with stock ``dspy.LM`` (DSPy's own engine,
thread hops and all), once with the LM the server builds (pooled engine, inline preparation and
pricing, no per-call proxy lookup). The requests on the wire, the predictions, the usage and
DSPy's history entry must be byte-identical.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, Literal

import dspy
import pytest
from dspy.clients.engines.lm15_engine import AsyncLM15Engine

from dspy_serve.lm.inline import _text_only
from dspy_serve.lm.pool import _transport_options
from dspy_serve.lm.registry import LanguageModels
from tests.support.fake_lm import FakeLM
from tests.support.settings import fake_settings


class Classify(dspy.Signature):
    """Classify the text and list its keywords."""

    text: str = dspy.InputField(desc="some text")
    label: Literal["positive", "negative"] = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()
    score: float = dspy.OutputField()


def _programs() -> dict[str, tuple[dspy.Module, dict[str, Any]]]:
    with_demos = dspy.Predict("question -> answer")
    with_demos.demos = [dspy.Example(question="1+1?", answer="2"), dspy.Example(question="2+2?", answer="4")]
    return {
        "predict": (dspy.Predict("question -> answer"), {"question": "What is the capital of France?"}),
        "chain_of_thought": (dspy.ChainOfThought("question -> answer"), {"question": "Why is the sky blue?"}),
        "typed": (dspy.Predict(Classify), {"text": "I <b>love</b> it"}),
        "demos": (with_demos, {"question": "3+3?"}),
    }


_PER_CALL = ("timestamp", "uuid", "response")  # differ on every call, whoever makes it
# DSPy does not price a custom engine's calls ("custom engine has no pricing provider"); the
# server's engines are custom (a pool sized by the server) and it prices calls itself.
_ENGINE_PRICING = ("cost", "cost_details")


def _stable(value: Any, leave_out: tuple[str, ...] = _PER_CALL) -> str:
    """A history entry or prediction as canonical JSON, without the keys ``leave_out``."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in leave_out}
    return json.dumps(value, sort_keys=True, default=repr)


@pytest.fixture
def served_lm(fake_lm: FakeLM, provider_key: str) -> dspy.BaseLM:
    return LanguageModels(fake_settings(fake_lm)).select()


async def _call(lm: dspy.BaseLM, program: dspy.Module, inputs: dict[str, Any]) -> tuple[dspy.Prediction, Any]:
    with dspy.context(lm=lm, disable_history=False), dspy.track_usage() as usage:
        prediction = await program.acall(**inputs)
    return prediction, usage.get_total_tokens()


def _run(lm: dspy.BaseLM, program: dspy.Module, inputs: dict[str, Any]) -> tuple[dspy.Prediction, Any]:
    return asyncio.run(_call(lm, program, inputs))


def _run_both(
    first: dspy.BaseLM, second: dspy.BaseLM, program: dspy.Module, inputs: dict[str, Any]
) -> list[tuple[dspy.Prediction, Any]]:
    """One event loop, as in the server: the server's async pool belongs to the loop that used it."""

    async def both() -> list[tuple[dspy.Prediction, Any]]:
        return [await _call(first, program, inputs), await _call(second, program, inputs)]

    return asyncio.run(both())


@pytest.mark.parametrize("name", list(_programs()))
def test_outputs_are_byte_identical_to_stock_dspy(name: str, fake_lm: FakeLM, served_lm: dspy.BaseLM) -> None:
    program, inputs = _programs()[name]
    stock = dspy.LM("openai/fake-model", api_base=fake_lm.base_url, cache=False)
    stock_prediction, stock_usage = _run(stock, program, inputs)
    stock_request = fake_lm.last_request
    served_prediction, served_usage = _run(served_lm, program, inputs)
    served_request = fake_lm.last_request

    assert json.dumps(served_request, sort_keys=True) == json.dumps(stock_request, sort_keys=True)
    assert _stable(served_prediction.toDict()) == _stable(stock_prediction.toDict())
    assert json.dumps(served_usage, sort_keys=True) == json.dumps(stock_usage, sort_keys=True)
    assert _stable(served_lm.history[-1], _PER_CALL + _ENGINE_PRICING) == _stable(
        stock.history[-1], _PER_CALL + _ENGINE_PRICING
    )


@pytest.mark.parametrize("name", list(_programs()))
def test_the_inline_path_records_what_dspys_own_acall_records(
    name: str, fake_lm: FakeLM, served_lm: dspy.BaseLM
) -> None:
    """Same LM, same engine: only the thread hops differ, so even the pricing must match."""
    program, inputs = _programs()[name]
    through_dspy = served_lm.copy()
    through_dspy._acall_once = functools.partial(dspy.LM.acall, through_dspy)  # type: ignore[attr-defined]

    (dspy_prediction, _), (inline_prediction, _) = _run_both(through_dspy, served_lm, program, inputs)

    assert _stable(inline_prediction.toDict()) == _stable(dspy_prediction.toDict())
    assert _stable(served_lm.history[-1]) == _stable(through_dspy.history[-1])


def test_a_warm_async_call_takes_no_worker_thread(
    served_lm: dspy.BaseLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = dspy.Predict("question -> answer")
    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await real_to_thread(func, *args, **kwargs)

    async def warm_then_call() -> dspy.Prediction:
        await _call(served_lm, program, {"question": "warm-up"})  # builds the provider's client
        monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
        prediction, _ = await _call(served_lm, program, {"question": "What is 2+2?"})
        return prediction

    assert asyncio.run(warm_then_call()).answer
    assert hops == [], f"DSPy's thread hops are back: {hops}"


def test_the_first_call_builds_the_providers_client_in_a_worker_thread(served_lm: dspy.BaseLM) -> None:
    engine = served_lm._async_engine_spec._inner  # type: ignore[attr-defined]
    assert isinstance(engine, AsyncLM15Engine) and not engine._providers
    _run(served_lm, dspy.Predict("question -> answer"), {"question": "q"})
    assert engine._providers, "built once, by DSPy's own (threaded) path"


def test_only_plain_text_is_prepared_inline() -> None:
    assert _text_only(None, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert _text_only("a prompt", None)
    image_part = [{"type": "image_url", "image_url": {"url": "file:///tmp/cat.png"}}]
    assert not _text_only(None, [{"role": "user", "content": image_part}]), "may read a file: a thread"


def test_proxy_variables_are_read_per_request_only_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspy.lm15 import RouterConfig

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    sized = RouterConfig(max_connections=7)
    assert _transport_options(sized) == {"max_connections": 7, "trust_env": False}
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _transport_options(sized)["trust_env"] is True, "NO_PROXY is matched per host by lm15"
