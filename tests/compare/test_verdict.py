"""The verdict's rules on a report's numbers: the minimum sample binds every rule, errors come first."""

from __future__ import annotations

from typing import Any

from dspy_serve.compare.verdict import decide


def report(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "program": "qa",
        "stable": "v1",
        "candidate": "v2",
        "min_sample": 30,
        "versions": [{"name": "v1", "feedback": {"n": 100}}, {"name": "v2", "feedback": {"n": 100}}],
        "errors": {"stable_runs": 100, "stable_errors": 1, "candidate_runs": 100, "candidate_errors": 2,
                   "p_value": 0.3},
        "split": {"diff": 0.0, "ci": [-0.1, 0.1], "stable_n": 100, "candidate_n": 100, "method": "newcombe"},
        "paired": None,
    }  # fmt: skip
    base.update(changes)
    return base


def test_all_failing_below_the_minimum_sample_is_not_yet_worse() -> None:
    # 10 runs, 10 errors: striking, and exactly the low-traffic verdict the minimum sample withholds.
    errors = {
        "stable_runs": 200,
        "stable_errors": 0,
        "candidate_runs": 10,
        "candidate_errors": 10,
        "p_value": 1e-9,
    }
    verdict, reason = decide(report(errors=errors))
    assert verdict == "inconclusive"  # the scores' rule decides, and it sees no difference
    errors["candidate_runs"] = errors["candidate_errors"] = 30
    verdict, reason = decide(report(errors=errors))
    assert verdict == "worse" and "failed 100.0 % of its 30 runs against 0.0 % of 200 for v1" in reason


def test_errors_outrank_a_better_paired_result() -> None:
    paired = {"pairs": 50, "labelled": 50, "stable_pass": 30, "candidate_pass": 45, "b": 0, "c": 15,
              "p_value": 0.0001}  # fmt: skip
    errors = {
        "stable_runs": 100,
        "stable_errors": 0,
        "candidate_runs": 100,
        "candidate_errors": 20,
        "p_value": 1e-6,
    }
    assert decide(report(paired=paired))[0] == "better"
    assert decide(report(paired=paired, errors=errors))[0] == "worse"


def test_a_missing_side_is_insufficient_data() -> None:
    verdict, reason = decide(report(candidate=None, errors=None, split=None))
    assert verdict == "insufficient_data" and reason.endswith("(only v1)")
