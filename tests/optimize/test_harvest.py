"""harvest: demos from captured traces of well-rated calls, corrections applied, no LM call."""

from __future__ import annotations

from typing import Any

import dspy

from dspy_serve.optimize.harvest import harvest


class TwoStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rewrite = dspy.Predict("question -> query")
        self.answer = dspy.Predict("query, question -> answer")


def traced(call_id: str, country: str, **row: Any) -> dict[str, Any]:
    query = f"capital of {country}"
    return {
        "call_id": call_id,
        "created_at": 0.0,
        "inputs": {"question": f"Capital of {country}?"},
        "outputs": {"answer": f"guess {country}"},
        "trace": [
            {
                "predictor": "rewrite",
                "inputs": {"question": f"Capital of {country}?"},
                "outputs": {"query": query},
            },
            {
                "predictor": "answer",
                "inputs": {"query": query, "question": f"Capital of {country}?"},
                "outputs": {"answer": f"guess {country}"},
            },
        ],
        "correction": None,
        "score": None,
        **row,
    }


def test_each_predictor_gets_its_own_steps_and_corrections_fix_the_step_that_answered() -> None:
    program = TwoStep()
    rows = [
        traced("a", "France", score=1.0),
        traced("b", "Peru", score=0.0, correction={"answer": "Lima"}),
        traced("c", "Chad", score=0.0),  # rated badly, not corrected: no demo
    ]
    demos = harvest(program, rows, max_demos=4)
    assert {(d.predictor, d.call_id) for d in demos} == {
        ("rewrite", "a"),
        ("rewrite", "b"),
        ("answer", "a"),
        ("answer", "b"),
    }
    answers = {demo.question: demo.answer for demo in program.answer.demos}
    assert answers == {"Capital of Peru?": "Lima", "Capital of France?": "guess France"}
    assert program.rewrite.demos[0].query in ("capital of Peru", "capital of France")


def test_corrected_and_best_rated_calls_come_first_within_the_limit() -> None:
    program = TwoStep()
    rows = [traced(str(i), f"country {i}", score=float(i) / 10) for i in range(1, 8)]
    rows.append(traced("fixed", "Peru", correction={"answer": "Lima"}))
    harvest(program, rows, max_demos=2)
    assert [demo.question for demo in program.answer.demos] == ["Capital of Peru?", "Capital of country 7?"]


def test_min_score_keeps_only_calls_rated_that_well() -> None:
    program = TwoStep()
    harvest(program, [traced("a", "A", score=0.6), traced("b", "B", score=0.9)], min_score=0.8)
    assert [demo.question for demo in program.answer.demos] == ["Capital of B?"]


def test_without_traces_a_one_predictor_program_takes_the_calls_inputs_and_label() -> None:
    program = dspy.Predict("question -> answer")
    row = {
        "call_id": "x",
        "inputs": {"question": "Q?"},
        "outputs": {"answer": "A"},
        "correction": {"answer": "B"},
    }
    [demo] = harvest(program, [row])
    assert demo.fields == {"question": "Q?", "answer": "B"} and program.demos[0].answer == "B"
    assert harvest(TwoStep(), [row]) == []  # several predictors need their traces
