"""Rows of captured calls: JSON values only, each a copy of its own, excluded fields left out."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import dspy
import pytest
from pydantic import BaseModel

from dspy_serve.data.rows import RowMaker, jsonable
from dspy_serve.settings import ServeSettings
from tests.support.stores import finished_call


class Color(enum.StrEnum):
    RED = "red"


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    "value",
    [
        "text",
        3,
        2.5,
        True,
        None,
        {"nested": {"list": [1, "two", None, False, 3.5]}, "empty": {}},
        (1, 2),  # a tuple: JSON's list
        {1: "one", "two": (2,)},  # a key that is no string: its text
        Color.RED,
        Point(x=1, y=2),
        {"when": object()},  # what JSON cannot hold: its text
        [dspy.Code(code="print(1)")],
    ],
)
def test_jsonable_is_what_a_json_round_trip_of_the_wire_form_gives(value: Any) -> None:
    from dspy_serve.serving.dspy_json import to_wire

    expected = json.loads(json.dumps(to_wire(value), default=str))
    assert jsonable(value) == expected
    assert json.dumps(jsonable(value)) == json.dumps(expected)  # the same types, not only equal


def test_jsonable_keeps_nan_as_the_round_trip_did() -> None:
    assert math.isnan(jsonable({"score": float("nan")})["score"])


def test_jsonable_returns_a_copy_the_redaction_hook_may_change_in_place() -> None:
    original = {"question": "Q?", "tags": ["a"], "meta": {"k": "v"}}
    copied = jsonable(original)
    copied["tags"].append("b")
    copied["meta"]["k"] = "changed"
    assert original == {"question": "Q?", "tags": ["a"], "meta": {"k": "v"}}


def test_a_row_leaves_out_excluded_fields_everywhere_and_shares_nothing_with_the_call() -> None:
    maker = RowMaker(ServeSettings(capture_trace=True, capture_exclude=["*.secret"]))
    call = finished_call(
        "c1",
        inputs={"question": "Q?", "secret": "s"},
        outputs={"answer": "A", "secret": "s"},
        trace=[{"predictor": "predict", "inputs": {"question": "Q?", "secret": "s"}, "outputs": {}}],
    )
    row = maker.row(call, sampled=True)
    assert row is not None
    assert row["inputs"] == {"question": "Q?"} and row["outputs"] == {"answer": "A"}
    assert row["trace"] == [{"predictor": "predict", "inputs": {"question": "Q?"}, "outputs": {}}]
    row["trace"][0]["inputs"]["question"] = "changed by a hook"
    assert call.trace is not None and call.trace[0]["inputs"]["question"] == "Q?"
