"""The statistics behind an SLO verdict: exact percentiles and an exact binomial interval.

Why exact: a 99.9% target is judged on a few thousand requests, where normal approximations
(Wald) claim certainty they do not have. Clopper-Pearson never under-covers, and with zero
errors its lower bound has the closed form alpha**(1/n), which gives the design's "about
3,000 requests" rule. No scipy: the regularized incomplete beta function is a short
continued fraction, and the bounds are found by bisection on it.

Convention used throughout: the verdict is two one-sided tests at `confidence` each.
"pass" means "the SLI is >= target with that confidence", "fail" means "the SLI is < target
with that confidence". The interval reported is those two one-sided bounds, which together
form a two-sided Clopper-Pearson interval at level 2*confidence - 1 (90% for 95%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

Verdict = Literal["pass", "fail", "inconclusive"]

_BISECTION_STEPS = 200
_CF_MAX_ITERATIONS = 100_000
_CF_EPSILON = 1e-15
_TINY = 1e-300


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation, as numpy's default method."""
    return quantiles(values, [q])[0]


def quantiles(values: Iterable[float], qs: Sequence[float]) -> list[float]:
    """Several quantiles of one sample, sorting it only once."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("quantile of an empty sample")
    return [_sorted_quantile(ordered, q) for q in qs]


def _sorted_quantile(ordered: Sequence[float], q: float) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of Beta(a, b) at x (Numerical Recipes' betai, modified Lentz)."""
    if a <= 0 or b <= 0:
        raise ValueError("beta parameters must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only left of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    result = d
    for m in range(1, _CF_MAX_ITERATIONS + 1):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = _TINY if abs(d) < _TINY else d
            c = 1.0 + numerator / c
            c = _TINY if abs(c) < _TINY else c
            d = 1.0 / d
            step = d * c
            result *= step
        if abs(step - 1.0) < _CF_EPSILON:
            return result
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _bisect_increasing(f, target: float) -> float:
    """The p in [0, 1] where the increasing function f reaches target."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def one_sided_bounds(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson one-sided lower and upper bounds, each at `confidence`.

    lower: the p at which P(X >= successes) = alpha; upper: P(X <= successes) = alpha.
    """
    _check_counts(successes, trials)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    n, x = trials, successes
    if x == 0:
        lower = 0.0
    elif x == n:
        lower = alpha ** (1.0 / n)
    else:
        # P(X >= x | p) = I_p(x, n - x + 1), increasing in p.
        lower = _bisect_increasing(lambda p: regularized_incomplete_beta(x, n - x + 1, p), alpha)
    if x == n:
        upper = 1.0
    elif x == 0:
        upper = 1.0 - alpha ** (1.0 / n)
    else:
        # P(X <= x | p) = I_(1-p)(n - x, x + 1), decreasing in p; solve on 1 - p instead.
        upper = 1.0 - _bisect_increasing(
            lambda q: regularized_incomplete_beta(n - x, x + 1, q), alpha
        )
    return lower, upper


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval at `confidence` (alpha/2 in each tail)."""
    return one_sided_bounds(successes, trials, 1.0 - (1.0 - confidence) / 2.0)


def slo_verdict(good: int, total: int, target: float, confidence: float = 0.95) -> Verdict:
    """pass if the one-sided lower bound reaches target, fail if the upper bound is below it."""
    _check_target(target)
    if total == 0:
        return "inconclusive"
    lower, upper = one_sided_bounds(good, total, confidence)
    if lower >= target:
        return "pass"
    if upper < target:
        return "fail"
    return "inconclusive"


def requests_needed(target: float, confidence: float = 0.95, errors: int = 0) -> int:
    """Fewest requests, with `errors` of them failed, that let slo_verdict say "pass".

    With no errors this is ceil(ln(1 - confidence) / ln(target)): 2995 for 99.9% at 95%.
    """
    _check_target(target)
    if errors < 0:
        raise ValueError("errors must be >= 0")
    if errors == 0:
        n = math.ceil(math.log(1.0 - confidence) / math.log(target))
        # Guard the float rounding of the closed form against the verdict's own arithmetic.
        while slo_verdict(n, n, target, confidence) != "pass":
            n += 1
        while n > 1 and slo_verdict(n - 1, n - 1, target, confidence) == "pass":
            n -= 1
        return n

    def passes(n: int) -> bool:
        return slo_verdict(n - errors, n, target, confidence) == "pass"

    lo = errors  # all errors, never passes
    hi = max(2 * errors + 1, requests_needed(target, confidence))
    while not passes(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def burn_rate(sli: float, target: float) -> float:
    """How fast the error budget burns: 1.0 spends it exactly over the SLO period."""
    _check_target(target)
    return (1.0 - sli) / (1.0 - target)


def _check_counts(successes: int, trials: int) -> None:
    if trials <= 0:
        raise ValueError("trials must be positive")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be within [0, {trials}], got {successes}")


def _check_target(target: float) -> None:
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be within (0, 1), got {target}")
