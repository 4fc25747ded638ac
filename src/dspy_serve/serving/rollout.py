"""A program's rollout: which version is stable, which is the candidate, and who gets which.

Routing names are pointers: ``stable`` and ``candidate`` name versions, so promote and
rollback flip a pointer, with no reload. A :class:`Rollout` is immutable; every change makes
a new one (its ``revision`` one higher), swapped in whole: a call that started on a version
finishes on it.

Assignment needs no shared state: a caller's bucket is a hash of a salt (the program and the
candidate's name, so a new candidate deals the callers again) and its sticky key, the same on
every worker and replica. Only the pointers and weights are shared (through the store).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from dspy_serve.errors import InvalidInput, RolloutConflict

__all__ = ["BUCKETS", "Rollout", "Shadow", "Split", "bucket", "parse_sticky"]

BUCKETS = 10_000  # a weight of 0.01 % is one bucket


def bucket(*parts: str) -> int:
    """A stable bucket in ``[0, BUCKETS)`` for ``parts``: the same on every process, every run."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse_sticky(spec: str) -> str:
    """``key``, ``header:NAME`` or ``input:FIELD``, checked (header names are case-insensitive)."""
    kind, sep, name = spec.partition(":")
    if spec == "key":
        return spec
    if sep and kind in ("header", "input") and name.strip():
        return f"{kind}:{name.strip().lower() if kind == 'header' else name.strip()}"
    raise ValueError(f"sticky {spec!r}: use 'key', 'header:NAME' or 'input:FIELD'")


@dataclass(frozen=True)
class Split:
    """A share of callers (``weight`` percent) sent to the candidate, sticky by ``sticky``."""

    weight: float
    sticky: str = "key"


@dataclass(frozen=True)
class Shadow:
    """A share of calls (``rate``, 0..1) the candidate also runs, its answers recorded only."""

    rate: float


@dataclass(frozen=True)
class Rollout:
    program: str
    stable: str
    candidate: str | None = None
    previous: tuple[str, ...] = ()  # the stable versions before this one, the latest last
    split: Split | None = None
    shadow: Shadow | None = None
    revision: int = 0
    changed_at: float = 0.0  # when this revision was made (time.time()); a rollout's window starts there

    # --- routing (on every call: cheap) ----------------------------------------------------------
    def version_for(self, sticky_key: str) -> str:
        """The version a caller with ``sticky_key`` gets."""
        split, candidate = self.split, self.candidate
        if split is None or candidate is None or split.weight <= 0:
            return self.stable
        if split.weight >= 100:
            return candidate
        return (
            candidate
            if bucket(self.program, candidate, sticky_key) < split.weight * BUCKETS / 100
            else self.stable
        )

    def shadow_for(self, call_id: str, served: str) -> str | None:
        """The version that also runs a call, unseen, or None: sampled by the call's id."""
        shadow, candidate = self.shadow, self.candidate
        if shadow is None or candidate is None or candidate == served or shadow.rate <= 0:
            return None
        return candidate if bucket("shadow", call_id) < shadow.rate * BUCKETS else None

    # --- changes (each returns the next rollout) ---------------------------------------------------
    def with_split(self, candidate: str, weight: float, sticky: str = "key") -> Rollout:
        if not 0 <= weight <= 100:
            raise _invalid("weight", "a percentage from 0 to 100")
        self._not_stable(candidate)
        return self._next(candidate=candidate, split=Split(weight, parse_sticky(sticky)))

    def with_shadow(self, candidate: str, rate: float) -> Rollout:
        if not 0 <= rate <= 1:
            raise _invalid("rate", "a share from 0 to 1")
        self._not_stable(candidate)
        split = self.split if candidate == self.candidate else None
        return self._next(candidate=candidate, shadow=Shadow(rate), split=split)

    def promoted(self, version: str) -> Rollout:
        """``version`` becomes stable; the split and the shadow end."""
        if version == self.stable:
            raise RolloutConflict(f"{version!r} is already the stable version of {self.program!r}")
        return self._next(
            stable=version, previous=(*self.previous, self.stable), candidate=None, split=None, shadow=None
        )

    def rolled_back(self) -> Rollout:
        """All traffic back on the stable version before the rollout: a rollout in progress (a
        candidate) ends; with none, the previous stable version is stable again."""
        if self.candidate is not None or self.split is not None or self.shadow is not None:
            return self._next(candidate=None, split=None, shadow=None)
        if not self.previous:
            raise RolloutConflict(
                f"nothing to roll back: {self.program!r} has had only {self.stable!r} as stable"
            )
        return self._next(stable=self.previous[-1], previous=self.previous[:-1])

    def at_revision(self, revision: int) -> Rollout:
        return replace(self, revision=revision, changed_at=time.time())

    def _not_stable(self, candidate: str) -> None:
        if candidate == self.stable:
            raise RolloutConflict(
                f"{candidate!r} is the stable version of {self.program!r}: name another as candidate"
            )

    def _next(self, **changes: Any) -> Rollout:
        return replace(self, revision=self.revision + 1, changed_at=time.time(), **changes)

    # --- as stored and shown ------------------------------------------------------------------------
    def to_data(self) -> dict[str, Any]:
        return {
            "stable": self.stable,
            "candidate": self.candidate,
            "previous": list(self.previous),
            "split": None
            if self.split is None
            else {"candidate": self.candidate, "weight": self.split.weight, "sticky": self.split.sticky},
            "shadow": None
            if self.shadow is None
            else {"candidate": self.candidate, "rate": self.shadow.rate},
            "revision": self.revision,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_data(cls, program: str, data: Mapping[str, Any], revision: int) -> Rollout:
        split, shadow = data.get("split"), data.get("shadow")
        return cls(
            program=program,
            stable=str(data["stable"]),
            candidate=data.get("candidate"),
            previous=tuple(data.get("previous") or ()),
            split=Split(float(split["weight"]), str(split.get("sticky", "key"))) if split else None,
            shadow=Shadow(float(shadow["rate"])) if shadow else None,
            revision=revision,
            changed_at=float(data.get("changed_at") or 0.0),
        )

    def versions(self) -> set[str]:
        """Every version this rollout points at."""
        return {self.stable, *self.previous, *([self.candidate] if self.candidate else [])}


def _invalid(field: str, expected: str) -> InvalidInput:
    return InvalidInput(
        f"{field} must be {expected}",
        errors=[{"loc": ["body", field], "msg": f"must be {expected}", "type": "value_error"}],
    )
