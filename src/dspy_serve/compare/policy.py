"""The automatic policy: what a rollout does on its own with a comparison's verdict.

Rolling back is safe to automate and on by default: a ``worse`` verdict (more errors, or worse
scores, each with the minimum sample behind it) sends all traffic back to the stable version.
Promoting is a decision people usually want to make: a ``better`` verdict promotes only when the
operator turned it on. ``inconclusive`` and ``insufficient_data`` never act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PolicyAction", "policy_action"]


@dataclass(frozen=True)
class PolicyAction:
    action: Literal["rollback", "promote"] | None
    reason: str
    version: str | None = None  # the candidate the action is about


def policy_action(
    report: Mapping[str, Any],
    *,
    candidate: str | None,
    auto_rollback: bool = True,
    auto_promote: bool = False,
) -> PolicyAction:
    """The action a report calls for. ``candidate`` is the rollout's candidate now, required: with
    none (the rollout ended, by a rollback say) nothing is done, however the last candidate's
    calls still read; a report about another version (the rollout moved on while it was
    computed) calls for nothing either."""
    verdict, compared = report["verdict"], report["candidate"]
    if candidate is None:
        return PolicyAction(None, "the rollout has no candidate")
    if compared != candidate:
        return PolicyAction(
            None, f"the report is about {compared or 'no candidate'}, the candidate is {candidate}"
        )
    why = f"{compared} is {verdict} than {report['stable']}: {report['reason']}"
    if verdict == "worse":
        if auto_rollback:
            return PolicyAction("rollback", why, compared)
        return PolicyAction(None, f"{why} (automatic rollback is off)", compared)
    if verdict == "better":
        if auto_promote:
            return PolicyAction("promote", why, compared)
        return PolicyAction(None, f"{why} (automatic promotion is off)", compared)
    return PolicyAction(
        None, f"{compared} against {report['stable']}: {verdict}: {report['reason']}", compared
    )
