"""Shadow pairs: the served call and the candidate's shadow run on the same inputs, both scored
against one label, so the comparison is paired (McNemar, a paired bootstrap).

The label is what a person vouched for: the served call's correction when its feedback has one,
else the served call's own outputs when its feedback passed it (true, or a score of at least
0.5). A pair without such feedback has no label and is only counted. Each side scores the
fraction of the label's fields it matched, and passes when it matched them all; a side that
failed (an error) scores 0. The served side often passes by construction (its own passed
outputs are the label): a candidate shows itself better on the corrected calls, where the
served version was wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from dspy_serve.compare.query import in_window, is_version
from dspy_serve.compare.stats import mcnemar, paired_bootstrap_counts
from dspy_serve.store import Store
from dspy_serve.store.calls import stream_rows
from dspy_serve.store.tables import calls, feedback

__all__ = ["DEFAULT_IGNORED", "PairCounts", "count_pairs", "label_of", "match"]

# Free text that explains an answer: two versions never write it word for word alike.
DEFAULT_IGNORED = frozenset({"reasoning", "rationale"})

PASS_SCORE = 0.5


@dataclass
class PairCounts:
    pairs: int = 0  # every shadow pair in the window, labelled or not
    labelled: int = 0
    stable_pass: int = 0
    candidate_pass: int = 0
    b: int = 0  # the stable side passed, the candidate failed
    c: int = 0  # the candidate passed, the stable side failed
    diffs: Counter[float] = field(default_factory=Counter)  # candidate minus stable match fraction

    def add(self, stable: float, candidate: float) -> None:
        self.labelled += 1
        stable_pass, candidate_pass = stable == 1.0, candidate == 1.0
        self.stable_pass += stable_pass
        self.candidate_pass += candidate_pass
        self.b += stable_pass and not candidate_pass
        self.c += candidate_pass and not stable_pass
        self.diffs[round(candidate - stable, 9)] += 1

    def json(self) -> dict[str, Any]:
        test = mcnemar(self.b, self.c) if self.labelled else None
        boot = paired_bootstrap_counts(self.diffs) if self.labelled else None
        return {
            "pairs": self.pairs,
            "labelled": self.labelled,
            "stable_pass": self.stable_pass,
            "candidate_pass": self.candidate_pass,
            "b": self.b,
            "c": self.c,
            "p_value": test.p_value if test else None,
            "method": test.method if test else None,
            "mean_diff": boot.mean if boot else None,
            "ci": [boot.low, boot.high] if boot else None,
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return bool(a == b)


def match(outputs: Any, failed: bool, label: Mapping[str, Any]) -> float:
    """The fraction of the label's fields that ``outputs`` got right (0 for a failed call)."""
    if failed or not isinstance(outputs, dict) or not label:
        return 0.0
    return sum(_same(outputs.get(name), value) for name, value in label.items()) / len(label)


def label_of(
    served_outputs: Any, served_failed: bool, ratings: list[dict[str, Any]], ignored: Collection[str]
) -> dict[str, Any] | None:
    """The label of a pair from its served call's feedback rows, or None (see the module doc)."""
    corrections = [r for r in ratings if isinstance(r["outputs"], dict) and r["outputs"]]
    if corrections:
        newest = max(corrections, key=lambda r: r["updated_at"])["outputs"]
        label = {k: v for k, v in newest.items() if k not in ignored}
        return label or None
    scores = [r["score"] for r in ratings if r["score"] is not None]
    if served_failed or not isinstance(served_outputs, dict) or not scores:
        return None
    if sum(scores) / len(scores) < PASS_SCORE:
        return None  # wrong, but nobody said what is right
    return {k: v for k, v in served_outputs.items() if k not in ignored} or None


async def count_pairs(
    store: Store,
    program: str,
    since: float,
    until: float | None,
    stable: str,
    candidate: str,
    ignored: Collection[str],
) -> PairCounts:
    """The pairs of ``stable``'s served calls in the window and ``candidate``'s shadow runs on them."""
    served, shadow = calls.alias("served"), calls.alias("shadow_run")
    joined = shadow.join(served, shadow.c.shadow_of == served.c.call_id)
    where = (
        in_window(served, program, since, until),
        is_version(served, stable),
        is_version(shadow, candidate),
    )
    counts = PairCounts()
    async with store.engine.connect() as connection:
        counts.pairs = int(
            (await connection.execute(select(func.count()).select_from(joined).where(*where))).scalar() or 0
        )
    query = (
        select(
            served.c.call_id.label("served_id"),
            shadow.c.call_id.label("shadow_id"),
            served.c.outputs.label("served_outputs"),
            served.c.error_code.label("served_error"),
            shadow.c.outputs.label("shadow_outputs"),
            shadow.c.error_code.label("shadow_error"),
            feedback.c.score,
            feedback.c.outputs,
            feedback.c.updated_at,
        )
        .select_from(joined.join(feedback, feedback.c.call_id == served.c.call_id))
        .where(*where)
        .order_by(served.c.call_id, shadow.c.call_id)
    )
    group: list[dict[str, Any]] = []
    async for row in stream_rows(store, query):
        if group and (row["served_id"], row["shadow_id"]) != (group[0]["served_id"], group[0]["shadow_id"]):
            _score(group, counts, ignored)
            group = []
        group.append(row)
    if group:
        _score(group, counts, ignored)
    return counts


def _score(group: list[dict[str, Any]], counts: PairCounts, ignored: Collection[str]) -> None:
    first = group[0]
    served_failed = first["served_error"] is not None
    label = label_of(first["served_outputs"], served_failed, group, ignored)
    if label is None:
        return
    counts.add(
        match(first["served_outputs"], served_failed, label),
        match(first["shadow_outputs"], first["shadow_error"] is not None, label),
    )
