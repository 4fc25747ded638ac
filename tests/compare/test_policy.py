"""The automatic policy: rollback on a worse verdict unless turned off, promote on a better one only
when turned on, never anything on inconclusive or insufficient data, or on a stale report."""

from __future__ import annotations

from typing import Any

import pytest

from dspy_serve.compare.policy import PolicyAction, policy_action


def report(verdict: str, candidate: str | None = "v2") -> dict[str, Any]:
    return {"verdict": verdict, "reason": "because", "stable": "v1", "candidate": candidate}


def test_a_worse_candidate_is_rolled_back_by_default() -> None:
    action = policy_action(report("worse"), candidate="v2")
    assert action == PolicyAction("rollback", "v2 is worse than v1: because", "v2")
    off = policy_action(report("worse"), candidate="v2", auto_rollback=False)
    assert off.action is None and "automatic rollback is off" in off.reason


def test_a_better_candidate_is_promoted_only_when_configured() -> None:
    assert policy_action(report("better"), candidate="v2").action is None
    assert "automatic promotion is off" in policy_action(report("better"), candidate="v2").reason
    assert policy_action(report("better"), candidate="v2", auto_promote=True) == PolicyAction(
        "promote", "v2 is better than v1: because", "v2"
    )


@pytest.mark.parametrize("verdict", ["inconclusive", "insufficient_data"])
def test_no_verdict_no_action(verdict: str) -> None:
    action = policy_action(report(verdict), candidate="v2", auto_rollback=True, auto_promote=True)
    assert action.action is None and verdict in action.reason


def test_a_stale_report_or_no_candidate_does_nothing() -> None:
    stale = policy_action(report("worse"), candidate="v3")
    assert stale.action is None and "the candidate is v3" in stale.reason
    # After a rollback the rollout has no candidate; the old one's calls still read worse.
    ended = policy_action(report("worse"), candidate=None)
    assert ended == PolicyAction(None, "the rollout has no candidate")
    assert policy_action(report("insufficient_data", candidate=None), candidate="v2").action is None
