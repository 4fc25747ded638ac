"""A property of every stream: whatever the signature, the adapter and how the LM's stream is
split, the tokens of each ``str`` field join to that field's value in the prediction, no token
holds an adapter's marker, and the stream ends with a prediction or an error.

Each example builds a program of a drawn signature (1-5 outputs of the supported types, in any
order), serves it in-process through the :class:`~dspy_serve.serving.service.Service` (the same
pipeline every front end uses) on DSPy's real ``dspy.LM`` path, and lets the fake LM answer in the
adapter's layout, split into chunks of drawn sizes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dspy_serve.serving.caller import Caller
from dspy_serve.serving.events import Failed, Finished, StreamEvent, Token
from dspy_serve.serving.service import CallOptions, Service
from tests.support.fake_lm import FakeLM
from tests.support.settings import fake_settings


class Place(BaseModel):
    name: str
    population: int


TYPES: dict[str, Any] = {
    "str": str,
    "literal": Literal["yes", "no"],
    "bool": bool,
    "int": int,
    "float": float,
    "list": list[str],
    "model": Place,
}
NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]
# Quotes, backslashes, brackets, braces, "&", "<", line ends, non-ASCII and an emoji (a surrogate
# pair in JSON): everything the layouts escape or could mistake for structure. No "#", ">" or ":",
# so a value can never spell a marker itself (and a marker in a token is always a leak).
TEXT = st.text(alphabet=st.sampled_from([*"abXY 09.,;!?'\"\\&<[]{}éë中\n\t\r", "🚀"]), max_size=30)
ADAPTERS = {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}


def value_of(kind: str) -> st.SearchStrategy[Any]:
    return {
        "str": TEXT,
        "literal": st.sampled_from(["yes", "no"]),
        "bool": st.booleans(),
        "int": st.integers(-10_000, 10_000),
        "float": st.integers(-10_000, 10_000).map(lambda i: i / 8),
        "list": st.lists(TEXT, max_size=3),
        "model": st.builds(dict, name=TEXT, population=st.integers(0, 10**6)),
    }[kind]


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any], str, list[int]]:
    count = draw(st.integers(1, 5))
    names = draw(st.permutations(NAMES))[:count]
    kinds = {name: draw(st.sampled_from(sorted(TYPES))) for name in names}
    values = {name: draw(value_of(kind)) for name, kind in kinds.items()}
    adapter = draw(st.sampled_from(sorted(ADAPTERS)))
    sizes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=6))
    return kinds, values, adapter, sizes


def markers(adapter: str, names: list[str]) -> list[str]:
    if adapter == "chat":
        return ["[[ ##", "## ]]"]
    if adapter == "json":
        return [f'"{name}"' for name in names]
    return [f"<{name}>" for name in names] + [f"</{name}>" for name in names]


async def stream(fake: FakeLM, kinds: dict[str, str], adapter: str) -> list[StreamEvent]:
    fields: dict[str, Any] = {"question": (str, dspy.InputField())}
    fields.update({name: (TYPES[kind], dspy.OutputField()) for name, kind in kinds.items()})
    program = dspy.Predict(dspy.make_signature(fields, "Answer."))
    # chat and json as --adapter says; XML has no flag: the caller's DSPy context chooses it.
    served = fake_settings(fake, adapter=adapter if adapter != "xml" else "auto")
    service = Service(served, {"p": program})
    await service.start()
    try:
        with dspy.context(adapter=ADAPTERS[adapter]()) if adapter == "xml" else _nothing():
            call = service.stream(Caller("test"), service.programs["p"], {"question": "q"}, CallOptions())
            events: list[StreamEvent] = []

            async def emit(event: StreamEvent) -> None:
                events.append(event)

            await call.admit()
            await call.stream(emit)
            return events
    finally:
        await service.stop()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.usefixtures("provider_key")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_tokens_join_to_each_str_field_and_never_hold_a_marker(
    fake_lm: FakeLM, case: tuple[dict[str, str], dict[str, Any], str, list[int]]
) -> None:
    kinds, values, adapter, sizes = case
    fake = fake_lm
    fake.reset()  # per example (the fixture resets once per test)
    fake.answers, fake.chunk_sizes = values, sizes

    events = asyncio.run(stream(fake, kinds, adapter))

    assert events and isinstance(events[-1], (Finished, Failed)), events
    assert sum(isinstance(event, (Finished, Failed)) for event in events) == 1
    assert isinstance(events[-1], Finished), events[-1]  # well-formed answers always parse
    outputs = events[-1].result.outputs
    joined: dict[str, str] = {}
    for event in events:
        if isinstance(event, Token):
            assert event.predictor == "self"
            assert not any(marker in event.chunk for marker in markers(adapter, list(kinds))), event
            joined[event.field] = joined.get(event.field, "") + event.chunk
    text_fields = {name for name, kind in kinds.items() if kind == "str"}
    assert set(joined) <= text_fields
    assert {name: joined.get(name, "") for name in text_fields} == {n: outputs[n] for n in text_fields}
