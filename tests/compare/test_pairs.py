"""A shadow pair's label and match, as pure functions (the report tests run them on a store)."""

from __future__ import annotations

from typing import Any

from dspy_serve.compare.pairs import DEFAULT_IGNORED, PairCounts, label_of, match


def rating(score: float | None = None, outputs: Any = None, updated_at: float = 1.0) -> dict[str, Any]:
    return {"score": score, "outputs": outputs, "updated_at": updated_at}


def test_the_newest_correction_is_the_label_whatever_the_scores() -> None:
    ratings = [
        rating(1.0, {"answer": "Lima"}, updated_at=1.0),
        rating(0.0, {"answer": "Cusco", "reasoning": "..."}, updated_at=2.0),
    ]
    assert label_of({"answer": "Paris"}, False, ratings, DEFAULT_IGNORED) == {"answer": "Cusco"}
    # Even a failed served call is labelled by its correction.
    assert label_of(None, True, ratings, DEFAULT_IGNORED) == {"answer": "Cusco"}


def test_a_passed_answer_labels_itself_and_a_failed_one_labels_nothing() -> None:
    outputs = {"answer": "Paris", "reasoning": "capital"}
    assert label_of(outputs, False, [rating(1.0), rating(0.5)], DEFAULT_IGNORED) == {"answer": "Paris"}
    assert label_of(outputs, False, [rating(1.0), rating(0.0)], DEFAULT_IGNORED) == {"answer": "Paris"}
    assert label_of(outputs, False, [rating(0.4)], DEFAULT_IGNORED) is None
    assert label_of(outputs, False, [rating(None)], DEFAULT_IGNORED) is None  # a comment alone
    assert label_of({"reasoning": "only"}, False, [rating(1.0)], DEFAULT_IGNORED) is None


def test_match_is_the_fraction_of_label_fields_and_a_failure_is_zero() -> None:
    label = {"answer": "Paris", "country": "France"}
    assert match({"answer": " Paris\n", "country": "France"}, False, label) == 1.0
    assert match({"answer": "Paris", "country": "Spain"}, False, label) == 0.5
    assert match({"answer": "Paris", "country": "France"}, True, label) == 0.0
    assert match(None, False, label) == 0.0
    assert match({"n": 3}, False, {"n": 3.0}) == 1.0  # JSON numbers compare as numbers


def test_pair_counts_keep_the_discordant_cells_and_the_differences() -> None:
    counts = PairCounts()
    for stable, candidate in [(1.0, 1.0), (1.0, 0.5), (0.0, 1.0), (0.0, 1.0)]:
        counts.add(stable, candidate)
    assert (counts.labelled, counts.stable_pass, counts.candidate_pass, counts.b, counts.c) == (4, 2, 3, 1, 2)
    assert counts.diffs == {0.0: 1, -0.5: 1, 1.0: 2}
    report = counts.json()
    assert report["method"] == "exact" and report["p_value"] == 1.0 and report["mean_diff"] == 0.375
    assert PairCounts().json()["p_value"] is None
