"""A comparison of a program's versions over one window of captured calls, read from the store.

Counts, sums and the feedback's moments are aggregated in SQL; latency percentiles are one
``ORDER BY ... OFFSET`` each (exact, and portable: SQLite has no percentile function); shadow
pairs are streamed and kept as counts. Memory stays flat however long the window.

Calls, errors, latency, tokens and cost count the sampled calls (``--capture-rate``), a fair
sample of the traffic; the calls stored only because feedback came for them count for the
feedback, never for the rates, which they would bend (rated calls are no random sample).

A version is its name (``version_name``), or its sha256 for calls recorded without one. A
shadow run (``shadow_of`` set) is counted apart from the served calls: its answer was never
returned, so it has no feedback of its own; it is compared with the served call it shadowed
(:mod:`.pairs`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from dspy_serve.compare.pairs import DEFAULT_IGNORED, PairCounts, count_pairs
from dspy_serve.compare.query import UNVERSIONED, in_window, is_version, version_key
from dspy_serve.compare.stats import (
    Z95,
    Moments,
    mean_diff,
    proportion_diff,
    proportion_greater,
    rank_index,
    wilson,
)
from dspy_serve.compare.verdict import decide
from dspy_serve.errors import InvalidInput
from dspy_serve.store import Store
from dspy_serve.store.tables import calls, feedback

__all__ = ["compare_report"]

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass
class Runs:
    """Served calls or shadow runs of one version, as SQL summed them."""

    calls: int = 0
    errors: int = 0
    tokens: int = 0
    cost_usd: float | None = None
    latency_ms: dict[str, float] | None = None


@dataclass
class Version:
    name: str
    sha256: str | None
    served: Runs = field(default_factory=Runs)
    shadow: Runs = field(default_factory=Runs)
    scores: Moments = field(default_factory=lambda: Moments(0, 0.0, 0.0))
    binary: bool = True  # every score is 0 or 1: a proportion, compared as one

    def json(self) -> dict[str, Any]:
        served, shadow, scores = self.served, self.shadow, self.scores
        mean = scores.mean
        if not scores.n:
            ci = None
        elif self.binary:
            ci = list(wilson(round(scores.total), scores.n))
        else:
            half = Z95 * (scores.variance / scores.n) ** 0.5
            ci = [mean - half, mean + half] if mean is not None else None
        return {
            "name": self.name,
            "sha256": self.sha256,
            "calls": served.calls,
            "errors": served.errors,
            "error_rate": served.errors / served.calls if served.calls else None,
            "error_rate_ci": list(wilson(served.errors, served.calls)) if served.calls else None,
            "latency_ms": served.latency_ms,
            "tokens": served.tokens,
            "cost_usd": served.cost_usd,
            "shadow_calls": shadow.calls,
            "shadow_errors": shadow.errors,
            "shadow_latency_ms": shadow.latency_ms,
            "shadow_tokens": shadow.tokens,
            "shadow_cost_usd": shadow.cost_usd,
            "feedback": {"n": scores.n, "mean": mean, "ci": ci, "binary": self.binary},
        }


async def compare_report(
    store: Store,
    program: str,
    *,
    since: float,
    until: float | None = None,
    stable: str | None = None,
    candidate: str | None = None,
    min_sample: int = 30,
    ignore_fields: Collection[str] = DEFAULT_IGNORED,
) -> dict[str, Any]:
    """Every version of ``program`` that answered in [since, until), ``stable`` against
    ``candidate`` (by default, the version with the most served calls against the next), and
    the verdict. ``ignore_fields`` are output fields a shadow pair's match leaves out (free
    reasoning text, which never matches word for word)."""
    if min_sample < 1:
        raise InvalidInput("min_sample must be at least 1", errors=[_loc("min_sample", "must be >= 1")])
    if until is not None and until <= since:
        raise InvalidInput("the window ends before it starts", errors=[_loc("since", "must be before until")])
    if stable is not None and stable == candidate:
        raise InvalidInput(
            f"stable and candidate are both {stable!r}", errors=[_loc("candidate", "must differ from stable")]
        )
    window = in_window(calls, program, since, until)
    versions = await _versions(store, window)
    stable, candidate = _pick(versions, stable, candidate)
    for name in (stable, candidate):
        if name is not None and name not in versions:
            versions[name] = Version(name, None)  # named, but silent in this window: zeros
    for version in versions.values():
        for shadow, runs in ((False, version.served), (True, version.shadow)):
            if runs.calls:
                runs.latency_ms = await _latency(store, window, version.name, shadow, runs.calls)
    pairs = (
        await count_pairs(store, program, since, until, stable, candidate, ignore_fields)
        if stable is not None and candidate is not None and versions[candidate].shadow.calls
        else PairCounts()
    )
    old = versions.get(stable) if stable is not None else None
    new = versions.get(candidate) if candidate is not None else None
    report: dict[str, Any] = {
        "program": program,
        "since": since,
        "until": until,
        "min_sample": min_sample,
        "stable": stable,
        "candidate": candidate,
        "versions": [v.json() for v in _ordered(versions, stable, candidate)],
        "errors": _error_test(old, new),
        "split": _split(old, new),
        "paired": pairs.json() if old is not None and new is not None else None,
    }
    report["verdict"], report["reason"] = decide(report)
    return report


def _loc(name: str, msg: str) -> dict[str, Any]:
    return {"loc": ["query", name], "msg": msg}


async def _versions(store: Store, window: ColumnElement[bool]) -> dict[str, Version]:
    key = version_key(calls).label("key")
    # A bare IS NULL (no bound parameter), so PostgreSQL sees the same expression in GROUP BY.
    shadow = calls.c.shadow_of.is_not(None)
    runs = (
        select(
            key,
            shadow.label("shadow"),
            func.max(calls.c.version).label("sha256"),
            func.count().label("calls"),
            func.count(calls.c.error_code).label("errors"),
            func.sum(calls.c.usage["total_tokens"].as_float()).label("tokens"),
            func.sum(calls.c.cost_usd).label("cost_usd"),
        )
        .where(window, calls.c.sampled.is_(True))
        .group_by(version_key(calls), shadow)
    )
    # One score per served call: the mean of its feedback (several keys may rate one call).
    per_call = (
        select(feedback.c.call_id, func.avg(feedback.c.score).label("score"))
        .where(feedback.c.score.is_not(None))
        .group_by(feedback.c.call_id)
        .subquery()
    )
    score = per_call.c.score
    scored = (
        select(
            key,
            func.count(score).label("n"),
            func.sum(score).label("total"),
            func.sum(score * score).label("total_sq"),
            func.sum(case((score.in_([0.0, 1.0]), 0), else_=1)).label("non_binary"),
        )
        .select_from(calls.join(per_call, per_call.c.call_id == calls.c.call_id))
        .where(window, calls.c.shadow_of.is_(None))
        .group_by(version_key(calls))
    )
    versions: dict[str, Version] = {}
    async with store.engine.connect() as connection:
        for row in (await connection.execute(runs)).mappings():
            name = row["key"] if row["key"] is not None else UNVERSIONED
            version = versions.setdefault(name, Version(name, row["sha256"]))
            version.sha256 = version.sha256 or row["sha256"]
            target = Runs(
                calls=int(row["calls"]),
                errors=int(row["errors"]),
                tokens=int(row["tokens"] or 0),
                cost_usd=float(row["cost_usd"]) if row["cost_usd"] is not None else None,
            )
            if row["shadow"]:
                version.shadow = target
            else:
                version.served = target
        for row in (await connection.execute(scored)).mappings():
            name = row["key"] if row["key"] is not None else UNVERSIONED
            version = versions.setdefault(name, Version(name, None))
            version.scores = Moments(int(row["n"]), float(row["total"] or 0.0), float(row["total_sq"] or 0.0))
            version.binary = not row["non_binary"]
    return versions


async def _latency(
    store: Store, window: ColumnElement[bool], name: str, shadow: bool, n: int
) -> dict[str, float]:
    """Exact nearest-rank percentiles, one indexed-window sort each: no row leaves the database
    but the one asked for."""
    kind = calls.c.shadow_of.is_not(None) if shadow else calls.c.shadow_of.is_(None)
    result = {}
    async with store.engine.connect() as connection:
        for label, q in QUANTILES.items():
            query = (
                select(calls.c.latency_s)
                .where(window, calls.c.sampled.is_(True), is_version(calls, name), kind)
                .order_by(calls.c.latency_s)
                .offset(rank_index(n, q))
                .limit(1)
            )
            value = (await connection.execute(query)).scalar()
            result[label] = float(value or 0.0) * 1000
    return result


def _pick(
    versions: dict[str, Version], stable: str | None, candidate: str | None
) -> tuple[str | None, str | None]:
    """Unnamed sides: stable is the version serving the most calls, candidate the busiest other."""
    by_served = sorted(versions.values(), key=lambda v: (-v.served.calls, v.name))
    if stable is None:
        stable = next((v.name for v in by_served if v.name != candidate), None)
    if candidate is None:
        others = [v for v in versions.values() if v.name != stable]
        others.sort(key=lambda v: (-(v.served.calls + v.shadow.calls), v.name))
        candidate = others[0].name if others else None
    return stable, candidate


def _ordered(versions: dict[str, Version], stable: str | None, candidate: str | None) -> list[Version]:
    first = [versions[name] for name in (stable, candidate) if name in versions]
    rest = sorted(
        (v for v in versions.values() if v.name not in (stable, candidate)),
        key=lambda v: (-v.served.calls, v.name),
    )
    return first + rest


def _error_test(old: Version | None, new: Version | None) -> dict[str, Any] | None:
    """Does the candidate fail more often? Over every run, served or shadow: a candidate only
    in shadow fails there."""
    if old is None or new is None:
        return None
    runs_old, errors_old = old.served.calls + old.shadow.calls, old.served.errors + old.shadow.errors
    runs_new, errors_new = new.served.calls + new.shadow.calls, new.served.errors + new.shadow.errors
    return {
        "stable_runs": runs_old,
        "stable_errors": errors_old,
        "candidate_runs": runs_new,
        "candidate_errors": errors_new,
        "p_value": proportion_greater(errors_new, runs_new, errors_old, runs_old),
    }


def _split(old: Version | None, new: Version | None) -> dict[str, Any] | None:
    """Candidate minus stable mean feedback score, on independent calls (a weighted split)."""
    if old is None or new is None or not old.scores.n or not new.scores.n:
        return None
    if old.binary and new.binary:
        diff, low, high = proportion_diff(
            round(new.scores.total), new.scores.n, round(old.scores.total), old.scores.n
        )
        method = "newcombe"
    else:
        diff, low, high = mean_diff(new.scores, old.scores)
        method = "welch"
    return {
        "stable_n": old.scores.n,
        "candidate_n": new.scores.n,
        "diff": diff,
        "ci": [low, high],
        "method": method,
    }
