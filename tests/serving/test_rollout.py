"""The rollout's pure parts: assignment by hash, shadow sampling, and every change's rules."""

from __future__ import annotations

import math

import pytest

from dspy_serve.errors import InvalidInput, RolloutConflict
from dspy_serve.serving.rollout import Rollout, bucket, parse_sticky


def test_a_bucket_is_the_same_in_every_process_and_spread_evenly() -> None:
    assert bucket("qa", "v2", "alice") == bucket("qa", "v2", "alice")
    buckets = [bucket("qa", "v2", f"caller-{i}") for i in range(20_000)]
    below = sum(b < 5_000 for b in buckets)
    # A fair coin over 20,000 callers: within 4 standard deviations (sd = 70.7).
    assert abs(below - 10_000) < 4 * math.sqrt(20_000 * 0.25)


def test_a_split_sends_its_weight_of_callers_to_the_candidate_and_each_caller_always_to_the_same() -> None:
    rollout = Rollout("qa", "v1").with_split("v2", 10)
    chosen = {f"caller-{i}": rollout.version_for(f"caller-{i}") for i in range(10_000)}
    share = sum(v == "v2" for v in chosen.values()) / len(chosen)
    assert abs(share - 0.10) < 4 * math.sqrt(0.1 * 0.9 / 10_000)
    assert all(rollout.version_for(caller) == version for caller, version in chosen.items())


def test_a_bigger_weight_keeps_every_caller_the_smaller_one_sent_to_the_candidate() -> None:
    """Raising a canary from 10 % to 50 % moves callers one way only: nobody flips back."""
    small, big = Rollout("qa", "v1").with_split("v2", 10), Rollout("qa", "v1").with_split("v2", 50)
    callers = [f"caller-{i}" for i in range(2_000)]
    assert all(big.version_for(c) == "v2" for c in callers if small.version_for(c) == "v2")


def test_no_split_weight_zero_and_weight_hundred() -> None:
    assert Rollout("qa", "v1").version_for("x") == "v1"
    assert Rollout("qa", "v1").with_split("v2", 0).version_for("x") == "v1"
    assert Rollout("qa", "v1").with_split("v2", 100).version_for("x") == "v2"


def test_a_shadow_samples_calls_and_never_shadows_the_version_that_served() -> None:
    rollout = Rollout("qa", "v1").with_shadow("v2", 0.25)
    shadowed = sum(rollout.shadow_for(f"call-{i}", "v1") == "v2" for i in range(8_000))
    assert abs(shadowed / 8_000 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 8_000)
    assert rollout.shadow_for("call-1", "v2") is None


def test_promote_ends_the_rollout_and_rollback_undoes_a_rollout_then_a_promotion() -> None:
    canary = Rollout("qa", "v1").with_split("v2", 10, "header:X-User").with_shadow("v2", 0.5)
    assert canary.split is not None and canary.split.sticky == "header:x-user"
    promoted = canary.promoted("v2")
    assert (promoted.stable, promoted.candidate, promoted.split, promoted.shadow) == ("v2", None, None, None)
    assert promoted.previous == ("v1",)
    assert canary.rolled_back().stable == "v1" and canary.rolled_back().candidate is None
    back = promoted.rolled_back()
    assert (back.stable, back.previous) == ("v1", ())
    assert [r.revision for r in (canary, promoted, back)] == [2, 3, 4]
    with pytest.raises(RolloutConflict, match="nothing to roll back"):
        back.rolled_back()


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.promoted("v1"),
        lambda r: r.with_split("v1", 10),
        lambda r: r.with_shadow("v1", 0.1),
    ],
)
def test_the_stable_version_cannot_be_its_own_candidate(change: object) -> None:
    with pytest.raises(RolloutConflict):
        change(Rollout("qa", "v1"))  # type: ignore[operator]


def test_out_of_range_weights_and_rates_name_the_field() -> None:
    with pytest.raises(InvalidInput) as weight:
        Rollout("qa", "v1").with_split("v2", 101)
    assert weight.value.errors is not None and weight.value.errors[0]["loc"] == ["body", "weight"]
    with pytest.raises(InvalidInput):
        Rollout("qa", "v1").with_shadow("v2", -0.1)


def test_sticky_specs_are_checked() -> None:
    assert parse_sticky("input:user_id") == "input:user_id"
    with pytest.raises(ValueError, match="use 'key'"):
        parse_sticky("cookie:x")


def test_a_rollout_survives_the_store_as_data() -> None:
    rollout = Rollout("qa", "v1").promoted("v2").with_split("v3", 25, "input:user").with_shadow("v3", 0.1)
    assert Rollout.from_data("qa", rollout.to_data(), rollout.revision) == rollout
