"""The statistics against published values: Newcombe's (1998) worked examples for Wilson and his
hybrid score interval, McNemar's exact and chi-square forms, and the bootstrap's determinism."""

from __future__ import annotations

import math
import random

import pytest

from dspy_serve.compare.stats import (
    Moments,
    mcnemar,
    mean_diff,
    paired_bootstrap,
    paired_bootstrap_counts,
    percentile,
    proportion_diff,
    proportion_greater,
    rank_index,
    wilson,
)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_newcombe_table_i(successes: int, n: int, low: float, high: float) -> None:
    got = wilson(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_without_data_knows_nothing() -> None:
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("s1", "n1", "s2", "n2", "low", "high"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_difference_of_proportions_matches_newcombe_method_10(
    s1: int, n1: int, s2: int, n2: int, low: float, high: float
) -> None:
    diff, got_low, got_high = proportion_diff(s1, n1, s2, n2)
    assert diff == pytest.approx(s1 / n1 - s2 / n2)
    assert (got_low, got_high) == pytest.approx((low, high), abs=5e-5)


def test_mcnemar_exact_is_the_binomial_tail() -> None:
    # 1 against 9 discordant pairs: 2 * (C(10,0) + C(10,1)) / 2**10.
    result = mcnemar(1, 9)
    assert (result.b, result.c, result.method) == (1, 9, "exact")
    assert result.p_value == 2 * 11 / 1024
    assert mcnemar(9, 1).p_value == result.p_value
    assert mcnemar(5, 5).p_value == 1.0


def test_mcnemar_chi_square_with_continuity_correction() -> None:
    # Agresti's presidential approval survey: 150 and 86 changed their minds.
    result = mcnemar(150, 86)
    assert result.method == "chi2"
    assert result.statistic == pytest.approx(63**2 / 236)
    assert result.p_value == pytest.approx(4.11e-5, rel=1e-2)
    # Wikipedia's example table (a=101, b=121, c=59, d=33): corrected chi-square 20.67.
    assert mcnemar(121, 59).statistic == pytest.approx(20.672, abs=1e-3)


def test_mcnemar_switches_to_chi_square_at_25_discordant_pairs() -> None:
    assert mcnemar(4, 20).method == "exact" and mcnemar(5, 20).method == "chi2"
    # Where both apply they agree roughly: the exact test is the conservative one.
    exact, chi2 = mcnemar(5, 20, method="exact"), mcnemar(5, 20, method="chi2")
    assert exact.p_value == pytest.approx(chi2.p_value, abs=0.005)
    assert mcnemar(0, 0).p_value == 1.0


def test_mean_diff_uses_welch_standard_error() -> None:
    a, b = Moments.of([1.0, 2.0, 3.0, 4.0]), Moments.of([2.0, 2.0, 2.0])
    assert (a.mean, a.variance, b.variance) == (2.5, pytest.approx(5 / 3), 0.0)
    diff, low, high = mean_diff(a, b)
    half = 1.959964 * math.sqrt((5 / 3) / 4)
    assert (diff, low, high) == pytest.approx((0.5, 0.5 - half, 0.5 + half), abs=1e-6)
    with pytest.raises(ValueError):
        mean_diff(Moments(0, 0.0, 0.0), b)


def test_proportion_greater_is_one_sided() -> None:
    assert proportion_greater(20, 100, 5, 100) < 0.001
    assert proportion_greater(5, 100, 20, 100) > 0.999
    assert proportion_greater(0, 50, 0, 50) == 1.0  # no errors anywhere: nothing to see


def test_paired_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    rng = random.Random(7)
    diffs = [rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0]) for _ in range(400)]
    first, second = paired_bootstrap(diffs, seed=3), paired_bootstrap(diffs, seed=3)
    assert first == second
    assert first.n == 400 and first.mean == pytest.approx(sum(diffs) / 400)
    assert first.low < first.mean < first.high
    # Its interval is about the normal one (mean +- 1.96 sd / sqrt(n)) at this size.
    sd = math.sqrt(Moments.of(diffs).variance)
    assert first.high - first.low == pytest.approx(2 * 1.96 * sd / 20, rel=0.1)


def test_paired_bootstrap_from_counts_is_the_same_resampling() -> None:
    diffs = [0.0] * 50 + [1.0] * 30 + [-0.5] * 20
    assert paired_bootstrap(diffs, seed=1) == paired_bootstrap_counts({0.0: 50, 1.0: 30, -0.5: 20}, seed=1)
    with pytest.raises(ValueError):
        paired_bootstrap([])


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([3.0], 0.99) == 3.0 and percentile([2.0, 1.0], 0.5) == 1.0
    assert rank_index(10, 0.0) == 0
    with pytest.raises(ValueError):
        rank_index(0, 0.5)
