"""The comparison report on a real store (SQLite and PostgreSQL), filled through the store's own
APIs: each of the four verdicts, from a weighted split and from shadow pairs, and the numbers
per version."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dspy_serve.compare.report import compare_report
from dspy_serve.errors import InvalidInput
from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store
from dspy_serve.store import store_url as url_of
from dspy_serve.store.calls import insert_calls
from dspy_serve.store.feedback import upsert_feedback
from tests.support.stores import call_row

NOW = time.time()
HOUR = 3600.0


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url_of(ServeSettings(store=store_url)))
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Any) -> AsyncIterator[Store]:
    opened = await Store.open(url_of(ServeSettings(store=f"sqlite:///{tmp_path / 'store.db'}")))
    yield opened
    await opened.close()


def run(call_id: str, name: str, **overrides: Any) -> dict[str, Any]:
    """A call answered by version ``name`` a minute ago."""
    values: dict[str, Any] = {
        "version": f"sha-{name}",
        "version_name": name,
        "created_at": NOW - 60,
        "outputs": {"answer": "A"},
        "cost_usd": 0.001,
        "shadow_of": None,
    }
    values.update(overrides)
    if values.get("error_code"):
        values["outputs"] = None
    return call_row(call_id, **values)


async def rated(store: Store, version: str, passed: int, failed: int) -> None:
    """``passed + failed`` served calls of ``version``, each rated true or false."""
    rows = [run(f"{version}-{i}", version) for i in range(passed + failed)]
    await insert_calls(store, rows)
    for i, row in enumerate(rows):
        await upsert_feedback(
            store, str(row["call_id"]), "", score=float(i < passed), outputs=None, comment=None
        )


async def report(store: Store, **options: Any) -> dict[str, Any]:
    return await compare_report(store, "qa", since=NOW - HOUR, **options)


async def test_a_split_where_the_candidate_scores_higher_is_better_and_reversed_worse(store: Store) -> None:
    await rated(store, "v1", passed=30, failed=30)  # the busier: stable by default
    await rated(store, "v2", passed=45, failed=5)
    result = await report(store)
    assert (result["stable"], result["candidate"], result["verdict"]) == ("v1", "v2", "better")
    assert result["split"]["method"] == "newcombe"
    assert result["split"]["diff"] == pytest.approx(0.9 - 0.5)
    assert result["split"]["ci"][0] > 0 and "above 0" in result["reason"]
    swapped = await report(store, stable="v2", candidate="v1")
    assert swapped["verdict"] == "worse" and "below 0" in swapped["reason"]


async def test_a_split_without_a_clear_difference_is_inconclusive(store: Store) -> None:
    await rated(store, "v1", passed=24, failed=16)
    await rated(store, "v2", passed=26, failed=14)
    result = await report(store)
    assert result["verdict"] == "inconclusive"
    low, high = result["split"]["ci"]
    assert low < 0 < high and "includes 0" in result["reason"]


async def test_too_few_scored_calls_is_insufficient_data_however_large_the_gap(store: Store) -> None:
    await rated(store, "v1", passed=1, failed=9)
    await rated(store, "v2", passed=10, failed=0)
    result = await report(store)
    assert result["verdict"] == "insufficient_data"
    assert "v1 10, v2 10" in result["reason"] and "needs 30" in result["reason"]
    # The same data with a lower bar decides.
    assert (await report(store, min_sample=10))["verdict"] == "better"


async def test_one_version_alone_is_insufficient_data(sqlite_store: Store) -> None:
    await rated(sqlite_store, "v1", passed=40, failed=0)
    result = await report(sqlite_store)
    assert (result["stable"], result["candidate"], result["verdict"]) == ("v1", None, "insufficient_data")
    assert "fewer than two versions" in result["reason"]


async def test_a_candidate_that_fails_more_often_is_worse_whatever_its_scores(store: Store) -> None:
    await rated(store, "v1", passed=25, failed=50)
    await rated(store, "v2", passed=50, failed=0)
    await insert_calls(store, [run(f"v2-err-{i}", "v2", error_code="upstream_error") for i in range(15)])
    result = await report(store)
    assert result["split"]["ci"][0] > 0  # its scores alone would say better
    assert result["verdict"] == "worse" and "errors" in result["reason"]
    assert (result["errors"]["candidate_errors"], result["errors"]["candidate_runs"]) == (15, 65)


async def shadowed(
    store: Store,
    kind: str,
    count: int,
    *,
    served: dict[str, Any] | None = None,
    shadow: dict[str, Any] | None = None,
    correction: dict[str, Any] | None = None,
    score: float | None = 1.0,
) -> None:
    """``count`` calls served by v1, each shadowed by v2, with the served call's feedback."""
    for i in range(count):
        call_id = f"{kind}-{i}"
        await insert_calls(
            store,
            [
                run(call_id, "v1", **(served or {})),
                run(f"{call_id}-shadow", "v2", wire="shadow", shadow_of=call_id, **(shadow or {})),
            ],
        )
        if score is not None or correction is not None:
            await upsert_feedback(store, call_id, "", score=score, outputs=correction, comment=None)


async def test_shadow_pairs_where_the_candidate_fixes_corrected_calls_are_better(store: Store) -> None:
    await shadowed(store, "agree", 30)  # both answered "A", and "A" was right
    await shadowed(
        store, "fixed", 10, shadow={"outputs": {"answer": "B"}}, correction={"answer": "B"}, score=0.0
    )
    result = await report(store)
    paired = result["paired"]
    assert (paired["pairs"], paired["labelled"], paired["b"], paired["c"]) == (40, 40, 0, 10)
    assert (paired["stable_pass"], paired["candidate_pass"], paired["method"]) == (30, 40, "exact")
    assert paired["p_value"] == pytest.approx(2 / 1024)
    assert paired["mean_diff"] == pytest.approx(0.25) and paired["ci"][0] > 0
    assert result["verdict"] == "better" and "McNemar" in result["reason"]


async def test_shadow_pairs_where_the_candidate_breaks_passed_calls_are_worse(store: Store) -> None:
    await shadowed(store, "agree", 25)
    await shadowed(store, "broken", 10, shadow={"outputs": {"answer": "wrong"}})
    await shadowed(store, "failed", 5, shadow={"error_code": "upstream_error"})  # an error is a fail
    paired = (result := await report(store))["paired"]
    assert (paired["b"], paired["c"], result["verdict"]) == (15, 0, "worse")


async def test_shadow_pairs_with_mixed_results_are_inconclusive(store: Store) -> None:
    await shadowed(store, "agree", 30)
    await shadowed(store, "broken", 3, shadow={"outputs": {"answer": "wrong"}})
    await shadowed(
        store, "fixed", 4, shadow={"outputs": {"answer": "B"}}, correction={"answer": "B"}, score=0.0
    )
    result = await report(store)
    assert (result["paired"]["b"], result["paired"]["c"]) == (3, 4)
    assert result["verdict"] == "inconclusive" and "no significant difference" in result["reason"]


async def test_too_few_labelled_pairs_falls_back_to_the_split_and_says_so(sqlite_store: Store) -> None:
    await shadowed(sqlite_store, "agree", 5)
    await shadowed(sqlite_store, "unrated", 50, score=None)  # no feedback: no label
    await shadowed(sqlite_store, "wrong", 5, score=0.0)  # wrong, but nobody said what is right
    result = await report(sqlite_store)
    assert (result["paired"]["pairs"], result["paired"]["labelled"]) == (60, 5)
    assert result["verdict"] == "insufficient_data" and "5 labelled shadow pairs" in result["reason"]


async def test_a_pair_is_matched_field_by_field_leaving_reasoning_out(sqlite_store: Store) -> None:
    served = {"outputs": {"answer": "A", "kind": "x", "reasoning": "because"}}
    await shadowed(
        sqlite_store,
        "half",
        30,
        served=served,
        shadow={"outputs": {"answer": " A ", "kind": "y", "reasoning": "other words"}},
    )
    paired = (await report(sqlite_store))["paired"]
    # The served outputs passed, so they are the label: "answer" matches (spaces aside), "kind"
    # does not; "reasoning" is not compared.
    assert (paired["stable_pass"], paired["candidate_pass"], paired["b"]) == (30, 0, 30)
    assert paired["mean_diff"] == pytest.approx(-0.5)


async def test_each_version_reports_its_calls_errors_latency_tokens_and_cost(store: Store) -> None:
    rows = [run(f"a{i}", "v1", latency_s=(i + 1) / 100) for i in range(100)]
    rows += [run("a-err", "v1", error_code="upstream_error", cost_usd=None)]
    rows += [run("b0", "v2", latency_s=0.5, cost_usd=0.01)]
    rows += [run("b-shadow", "v2", wire="shadow", shadow_of="a0", latency_s=0.2, cost_usd=0.02)]
    rows += [run("old", "v1", created_at=NOW - 2 * HOUR), run("other", "v1", program="kitchen")]
    rows += [run("late", "v1", created_at=NOW + HOUR)]
    await insert_calls(store, rows)
    result = await report(store, until=NOW)
    v1, v2 = result["versions"]
    assert (v1["name"], v1["sha256"], v1["calls"], v1["errors"]) == ("v1", "sha-v1", 101, 1)
    assert v1["error_rate"] == pytest.approx(1 / 101)
    assert v1["error_rate_ci"][0] < 1 / 101 < v1["error_rate_ci"][1]
    assert v1["latency_ms"]["p50"] == pytest.approx(500.0)  # the 51st of 101 (the error's 10 ms first)
    assert v1["tokens"] == 101 * 12 and v1["cost_usd"] == pytest.approx(0.1)
    # The shadow run is counted apart, its cost too.
    assert (v2["calls"], v2["shadow_calls"]) == (1, 1)
    assert (v2["cost_usd"], v2["shadow_cost_usd"]) == (pytest.approx(0.01), pytest.approx(0.02))
    assert v2["latency_ms"] == {"p50": 500.0, "p90": 500.0, "p99": 500.0}
    assert v2["shadow_latency_ms"]["p50"] == pytest.approx(200.0)
    assert v1["feedback"] == {"n": 0, "mean": None, "ci": None, "binary": True}


async def test_calls_stored_only_for_their_feedback_count_for_scores_not_rates(sqlite_store: Store) -> None:
    await insert_calls(sqlite_store, [run("sampled", "v1"), run("rated-only", "v1", sampled=False)])
    await upsert_feedback(sqlite_store, "rated-only", "", score=1.0, outputs=None, comment=None)
    [v1] = (await report(sqlite_store))["versions"]
    assert (v1["calls"], v1["tokens"], v1["feedback"]["n"]) == (1, 12, 1)


async def test_latency_percentiles_are_nearest_rank_over_the_served_calls(sqlite_store: Store) -> None:
    rows = [run(f"a{i}", "v1", latency_s=(i + 1) / 1000) for i in range(200)]
    await insert_calls(sqlite_store, rows)
    [v1] = (await report(sqlite_store))["versions"]
    assert v1["latency_ms"] == {
        "p50": pytest.approx(100.0),
        "p90": pytest.approx(180.0),
        "p99": pytest.approx(198.0),
    }


async def test_numeric_scores_are_compared_as_means(sqlite_store: Store) -> None:
    for version, base in (("v1", 0.4), ("v2", 0.7)):
        rows = [run(f"{version}-{i}", version) for i in range(40)]
        await insert_calls(sqlite_store, rows)
        for i, row in enumerate(rows):
            score = base + (i % 5) / 20
            await upsert_feedback(
                sqlite_store, str(row["call_id"]), "", score=score, outputs=None, comment=None
            )
    result = await report(sqlite_store)
    assert result["split"]["method"] == "welch" and result["verdict"] == "better"
    assert result["versions"][0]["feedback"]["binary"] is False


async def test_calls_without_a_version_are_a_group_of_their_own(sqlite_store: Store) -> None:
    await insert_calls(
        sqlite_store, [run(f"old{i}", "v0", version=None, version_name=None) for i in range(3)]
    )
    await insert_calls(sqlite_store, [run("new", "v1"), run("new-sha", "v1", version_name=None)])
    result = await report(sqlite_store)
    # A call with a sha256 but no name is grouped by its sha256; the busiest group is the stable one.
    names = [(v["name"], v["calls"]) for v in result["versions"]]
    assert names == [("(unversioned)", 3), ("sha-v1", 1), ("v1", 1)]
    assert result["versions"][0]["latency_ms"] is not None  # its percentiles found its rows


async def test_named_sides_that_did_not_answer_show_as_zeros(sqlite_store: Store) -> None:
    await rated(sqlite_store, "v1", passed=40, failed=0)
    result = await report(sqlite_store, candidate="v9")
    assert [v["name"] for v in result["versions"]] == ["v1", "v9"]
    assert result["versions"][1]["calls"] == 0 and result["verdict"] == "insufficient_data"


async def test_impossible_questions_are_invalid_input(sqlite_store: Store) -> None:
    with pytest.raises(InvalidInput, match="both 'v1'"):
        await report(sqlite_store, stable="v1", candidate="v1")
    with pytest.raises(InvalidInput, match="min_sample"):
        await report(sqlite_store, min_sample=0)
    with pytest.raises(InvalidInput, match="ends before"):
        await report(sqlite_store, until=NOW - 2 * HOUR)
