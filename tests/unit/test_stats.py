"""Percentiles, the Clopper-Pearson bounds and the SLO verdict, checked against values
computed another way (hand arithmetic, closed forms, direct binomial sums)."""

from __future__ import annotations

import math

import pytest

from probes import stats


def binomial_tail_at_least(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), summed term by term."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1))


def solve_increasing(f, target: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def brute_force_bounds(x: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds from the binomial definition, not the beta function."""
    alpha = 1 - confidence
    lower = 0.0 if x == 0 else solve_increasing(lambda p: binomial_tail_at_least(x, n, p), alpha)
    # P(X <= x | p) = alpha, and P(X <= x) = 1 - P(X >= x + 1) decreases in p.
    upper = (
        1.0
        if x == n
        else solve_increasing(lambda p: binomial_tail_at_least(x + 1, n, p), 1 - alpha)
    )
    return lower, upper


# --- percentiles ----------------------------------------------------------------------


def test_quantile_interpolates_linearly_between_order_statistics():
    sample = [3, 1, 4, 1, 5, 9, 2, 6]  # sorted: 1 1 2 3 4 5 6 9
    assert stats.quantile(sample, 0.5) == pytest.approx(3.5)  # position 3.5
    assert stats.quantile(sample, 0.95) == pytest.approx(6 + 0.65 * 3)  # position 6.65
    assert stats.quantile(sample, 0.25) == pytest.approx(1 + 0.75 * 1)  # position 1.75
    assert stats.quantile(sample, 0.0) == 1
    assert stats.quantile(sample, 1.0) == 9


def test_quantiles_sorts_once_and_keeps_order_of_requests():
    assert stats.quantiles([4.0, 1.0, 2.0, 3.0], [0.99, 0.5, 0.0]) == pytest.approx(
        [3.97, 2.5, 1.0]
    )


def test_quantile_of_one_value_is_that_value():
    assert stats.quantile([0.25], 0.99) == 0.25


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_quantile_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        stats.quantile([1.0, 2.0], bad)


def test_quantile_of_empty_sample_fails():
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)


# --- incomplete beta ------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.001, 0.3, 0.5, 0.77, 0.999])
def test_incomplete_beta_closed_forms(x):
    assert stats.regularized_incomplete_beta(1, 1, x) == pytest.approx(x)
    assert stats.regularized_incomplete_beta(7, 1, x) == pytest.approx(x**7)
    assert stats.regularized_incomplete_beta(1, 7, x) == pytest.approx(1 - (1 - x) ** 7)


def test_incomplete_beta_symmetry_and_median():
    assert stats.regularized_incomplete_beta(12, 12, 0.5) == pytest.approx(0.5)
    left = stats.regularized_incomplete_beta(3.5, 40, 0.2)
    assert left == pytest.approx(1 - stats.regularized_incomplete_beta(40, 3.5, 0.8))


def test_incomplete_beta_matches_binomial_tail():
    # P(X >= x) for Binomial(n, p) = I_p(x, n - x + 1)
    for n, x, p in [(20, 15, 0.6), (50, 3, 0.02), (200, 190, 0.97)]:
        assert stats.regularized_incomplete_beta(x, n - x + 1, p) == pytest.approx(
            binomial_tail_at_least(x, n, p), rel=1e-9
        )


# --- Clopper-Pearson ------------------------------------------------------------------


def test_zero_errors_lower_bound_is_alpha_to_the_one_over_n():
    lower, upper = stats.one_sided_bounds(2995, 2995, 0.95)
    assert lower == pytest.approx(0.05 ** (1 / 2995), abs=1e-12)
    assert upper == 1.0
    # two-sided at 95% puts alpha/2 in the tail
    lower2, _ = stats.clopper_pearson(2995, 2995, 0.95)
    assert lower2 == pytest.approx(0.025 ** (1 / 2995), abs=1e-12)


def test_all_errors_upper_bound_closed_form():
    lower, upper = stats.one_sided_bounds(0, 40, 0.95)
    assert lower == 0.0
    assert upper == pytest.approx(1 - 0.05 ** (1 / 40), abs=1e-12)


@pytest.mark.parametrize("x,n", [(15, 20), (1, 50), (97, 100), (5, 10), (199, 200)])
def test_bounds_match_direct_binomial_sums(x, n):
    got = stats.one_sided_bounds(x, n, 0.95)
    expected = brute_force_bounds(x, n, 0.95)
    assert got == pytest.approx(expected, abs=1e-9)
    assert got[0] <= x / n <= got[1]


def test_two_sided_interval_matches_r_binom_test():
    # R: binom.test(15, 20)$conf.int -> 0.5089541 0.9134285
    lower, upper = stats.clopper_pearson(15, 20, 0.95)
    assert lower == pytest.approx(0.5089541, abs=1e-7)
    assert upper == pytest.approx(0.9134285, abs=1e-7)


def test_large_sample_bounds_are_tight_and_fast_enough():
    lower, upper = stats.one_sided_bounds(999_000, 1_000_000, 0.95)
    assert 0.99894 < lower < 0.999 < upper < 0.99906


@pytest.mark.parametrize("good,total", [(-1, 10), (11, 10), (0, 0)])
def test_bounds_reject_impossible_counts(good, total):
    with pytest.raises(ValueError):
        stats.one_sided_bounds(good, total)


# --- verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good,total,target,expected",
    [
        (2995, 2995, 0.999, "pass"),  # exactly enough clean requests
        (2994, 2994, 0.999, "inconclusive"),  # one short
        (9998, 10000, 0.999, "pass"),  # 2 errors: Poisson upper 6.30 per 10,000
        (998, 1000, 0.999, "inconclusive"),  # 2 errors in 1,000 could still be 99.9%
        (995, 1000, 0.999, "fail"),  # 5 errors: surely worse than 99.9%
        (0, 0, 0.999, "inconclusive"),
        (300, 300, 0.99, "pass"),
    ],
)
def test_slo_verdict(good, total, target, expected):
    assert stats.slo_verdict(good, total, target) == expected


def test_requests_needed_zero_errors_is_the_closed_form():
    assert stats.requests_needed(0.999, 0.95) == math.ceil(math.log(0.05) / math.log(0.999))
    assert stats.requests_needed(0.999, 0.95) == 2995
    assert stats.requests_needed(0.99, 0.95) == math.ceil(math.log(0.05) / math.log(0.99))


def test_requests_needed_with_errors_is_the_smallest_passing_count():
    n = stats.requests_needed(0.999, 0.95, errors=1)
    assert stats.slo_verdict(n - 1, n, 0.999) == "pass"
    assert stats.slo_verdict(n - 2, n - 1, 0.999) != "pass"
    # Poisson approximation: 4.744 expected errors at the bound -> about 4,744 requests
    assert abs(n - 4744) / 4744 < 0.005


def test_burn_rate():
    assert stats.burn_rate(0.998, 0.999) == pytest.approx(2.0)
    assert stats.burn_rate(1.0, 0.999) == 0.0
    assert stats.burn_rate(0.9995, 0.999) == pytest.approx(0.5)


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5])
def test_targets_outside_open_unit_interval_are_rejected(target):
    with pytest.raises(ValueError):
        stats.slo_verdict(1, 1, target)
