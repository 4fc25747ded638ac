"""The verdict of a comparison, from its report: ``better``, ``worse``, ``inconclusive`` or
``insufficient_data``, with the sentence that says why.

In order:

1. errors: a candidate that fails significantly more often (one-sided p < 0.05, with at least
   ``min_sample`` runs on each side) is ``worse``, whatever its scores;
2. shadow pairs: with at least ``min_sample`` labelled pairs, McNemar's test decides
   (p < 0.05: ``better`` or ``worse`` by the direction, else ``inconclusive``);
3. the split: each version needs ``min_sample`` scored calls, else ``insufficient_data``; the
   95 % interval of the candidate's mean score minus the stable one's decides, ``better`` or
   ``worse`` when it excludes 0, else ``inconclusive``.

The minimum sample is what keeps a quiet hour from deciding anything: with five calls a side,
one unlucky answer moves a rate by 20 points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["ALPHA", "Verdict", "decide"]

Verdict = Literal["better", "worse", "inconclusive", "insufficient_data"]

ALPHA = 0.05


def decide(report: Mapping[str, Any]) -> tuple[Verdict, str]:
    stable, candidate, least = report["stable"], report["candidate"], report["min_sample"]
    if stable is None or candidate is None:
        only = f" (only {stable or candidate})" if (stable or candidate) else ""
        return (
            "insufficient_data",
            f"fewer than two versions of {report['program']} answered in the window{only}",
        )
    errors = report["errors"]
    if errors["stable_runs"] >= least and errors["candidate_runs"] >= least and errors["p_value"] < ALPHA:
        new = _rate(errors["candidate_errors"], errors["candidate_runs"])
        old = _rate(errors["stable_errors"], errors["stable_runs"])
        return "worse", (
            f"{candidate} failed {new} of its {errors['candidate_runs']} runs against {old} of "
            f"{errors['stable_runs']} for {stable}: significantly more errors "
            f"(one-sided p = {_p(errors['p_value'])})"
        )
    paired = report["paired"]
    if paired and paired["labelled"] >= least:
        return _paired(paired, stable, candidate)
    split = report["split"]
    scored = {
        version["name"]: version["feedback"]["n"]
        for version in report["versions"]
        if version["name"] in (stable, candidate)
    }
    short = [name for name in (stable, candidate) if scored.get(name, 0) < least]
    if split is None or short:
        counts = ", ".join(f"{name} {scored.get(name, 0)}" for name in (stable, candidate))
        pairs = f" and {paired['labelled']} labelled shadow pairs" if paired and paired["pairs"] else ""
        return "insufficient_data", (
            f"scored calls: {counts}{pairs}; a verdict needs {least} per version (or {least} labelled pairs)"
        )
    low, high = split["ci"]
    interval = f"{split['diff']:+.3f} (95 % CI {low:+.3f} to {high:+.3f})"
    means = f"{candidate}'s mean feedback score minus {stable}'s is {interval}"
    if low > 0:
        return "better", f"{means}: above 0"
    if high < 0:
        return "worse", f"{means}: below 0"
    return "inconclusive", f"{means}: it includes 0, no difference shown"


def _paired(paired: Mapping[str, Any], stable: str, candidate: str) -> tuple[Verdict, str]:
    b, c, n = paired["b"], paired["c"], paired["labelled"]
    facts = (
        f"on {n} labelled shadow pairs {candidate} passed {paired['candidate_pass']} and {stable} "
        f"{paired['stable_pass']} (McNemar p = {_p(paired['p_value'])}, {c} pairs only {candidate} "
        f"passed, {b} only {stable})"
    )
    if paired["p_value"] < ALPHA and c > b:
        return "better", facts
    if paired["p_value"] < ALPHA and b > c:
        return "worse", facts
    return "inconclusive", f"{facts}: no significant difference"


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"
