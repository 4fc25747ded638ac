"""The statistics behind a comparison, pure and deterministic: no SciPy, only ``math``,
``statistics.NormalDist`` and, for the bootstrap, NumPy's seeded generator.

Every interval is two-sided 95 % unless said otherwise. The choices, and why:

- one proportion: Wilson's score interval (the normal "Wald" interval is too narrow near 0 and 1,
  exactly where error rates live);
- two independent proportions: Newcombe's hybrid score interval (method 10 of Newcombe 1998),
  built from the two Wilson intervals;
- two independent means: Welch's standard error with the normal quantile (a comparison needs a
  minimum sample of about 30 per side, where the t and normal quantiles agree to 2 %);
- paired pass/fail: McNemar's test, exact (binomial on the discordant pairs) below 25 of them,
  else the chi-square with continuity correction;
- paired scores: a percentile bootstrap of the mean difference, seeded.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Literal

__all__ = [
    "Z95",
    "Bootstrap",
    "McNemar",
    "Moments",
    "mcnemar",
    "mean_diff",
    "paired_bootstrap",
    "paired_bootstrap_counts",
    "percentile",
    "proportion_diff",
    "proportion_greater",
    "rank_index",
    "wilson",
]

_NORMAL = NormalDist()
Z95 = _NORMAL.inv_cdf(0.975)

# Below this many discordant pairs McNemar's chi-square is a poor approximation of its exact test.
EXACT_BELOW = 25


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion; (0, 1) when there is nothing to go on."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion_diff(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """``p1 - p2`` and Newcombe's hybrid score interval for it (both samples need n > 0)."""
    p1, p2 = s1 / n1, s2 / n2
    low1, high1 = wilson(s1, n1, z)
    low2, high2 = wilson(s2, n2, z)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    high = diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return (diff, low, high)


def proportion_greater(s1: int, n1: int, s2: int, n2: int) -> float:
    """One-sided p-value that the first proportion is greater than the second (pooled z-test)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 1.0  # no variation at all: nothing can be significant
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 1 - _NORMAL.cdf((s1 / n1 - s2 / n2) / se)


@dataclass(frozen=True)
class Moments:
    """A sample summarised by its count, sum and sum of squares: what SQL aggregates give."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float:
        """The sample variance (n - 1), never negative from rounding; 0 below two values."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        items = list(values)
        return cls(len(items), math.fsum(items), math.fsum(v * v for v in items))


def mean_diff(a: Moments, b: Moments, z: float = Z95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its interval, with Welch's (unpooled) standard error."""
    if not a.n or not b.n:
        raise ValueError("both samples need at least one value")
    diff = a.total / a.n - b.total / b.n
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    return (diff, diff - z * se, diff + z * se)


@dataclass(frozen=True)
class McNemar:
    """``b``: pairs the first side passed and the second failed; ``c``: the reverse."""

    b: int
    c: int
    p_value: float
    method: Literal["exact", "chi2"]
    statistic: float | None  # the chi-square, for that method


def mcnemar(b: int, c: int, method: Literal["auto", "exact", "chi2"] = "auto") -> McNemar:
    """McNemar's test on the discordant pairs (two-sided); the concordant ones carry no information."""
    n = b + c
    if method == "auto":
        method = "exact" if n < EXACT_BELOW else "chi2"
    if n == 0:
        return McNemar(b, c, 1.0, method, None if method == "exact" else 0.0)
    if method == "exact":
        # Twice the smaller tail of Binomial(n, 1/2), in exact integer arithmetic.
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
        return McNemar(b, c, min(1.0, float(Fraction(2 * tail, 2**n))), "exact", None)
    statistic = max(abs(b - c) - 1, 0) ** 2 / n
    # The chi-square with one degree of freedom is a squared standard normal.
    p_value = 2 * (1 - _NORMAL.cdf(math.sqrt(statistic)))
    return McNemar(b, c, min(1.0, p_value), "chi2", statistic)


@dataclass(frozen=True)
class Bootstrap:
    n: int
    mean: float
    low: float
    high: float


def paired_bootstrap(diffs: Iterable[float], *, resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """The mean of paired differences and its 95 % percentile-bootstrap interval, seeded."""
    return paired_bootstrap_counts(Counter(diffs), resamples=resamples, seed=seed)


def paired_bootstrap_counts(
    counts: Mapping[float, int], *, resamples: int = 10_000, seed: int = 0
) -> Bootstrap:
    """:func:`paired_bootstrap` from how often each difference occurred.

    Drawing n pairs with replacement is drawing a multinomial of the distinct values' counts:
    the same distribution, in memory that grows with the distinct values (a handful, for
    field-match fractions), not with the pairs.
    """
    import numpy as np

    values = sorted(value for value, count in counts.items() if count > 0)
    weights = np.array([counts[value] for value in values], dtype=float)
    n = int(weights.sum())
    if n == 0:
        raise ValueError("no pairs to resample")
    points = np.array(values, dtype=float)
    mean = float(points @ weights / n)
    draws = np.random.default_rng(seed).multinomial(n, weights / n, size=resamples)
    means = draws @ points / n
    low, high = np.percentile(means, [2.5, 97.5])
    return Bootstrap(n, mean, float(low), float(high))


def rank_index(n: int, q: float) -> int:
    """The 0-based position of the ``q`` quantile in ``n`` sorted values (nearest rank): a value
    that was observed, never an interpolation between two."""
    if n <= 0:
        raise ValueError("no values")
    return min(n, max(1, math.ceil(q * n))) - 1


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``."""
    return sorted(values)[rank_index(len(values), q)]
