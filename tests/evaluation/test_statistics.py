"""Paired A/B statistics against hand cases, enumeration, normal theory and their
false-positive rate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine.evaluation.compare import bootstrap_ci, compare_scores, paired_permutation_test


def test_bootstrap_ci_hand_cases() -> None:
    """Empty, single, constant, and small cases whose bootstrap quantiles are known exactly."""
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([2.0] * 9) == (2.0, 2.0)
    # {0, 1}: resample means 0, 1/2, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles are the extremes.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # [0, 1, 5]: 27 equally likely resamples. Each extreme (0 or 5) has probability
    # 1/27 = 3.7% > 2.5%, so the 95% CI is [0, 5]; at 90% the 5% quantile passes 0 (3.7%)
    # and lands on 1/3 (cumulative 14.8%), symmetrically 11/3 at the top.
    assert bootstrap_ci([0.0, 1.0, 5.0]) == (0.0, 5.0)
    lo, hi = bootstrap_ci([0.0, 1.0, 5.0], confidence=0.90)
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(11 / 3)


def test_bootstrap_ci_normal_theory_and_determinism() -> None:
    """For n=400 the CI is close to mean ± 1.96 sd/sqrt(n); the same seed gives the same CI."""
    d = np.random.default_rng(1).normal(0.3, 1.0, size=400)
    lo, hi = bootstrap_ci(d, seed=5)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert bootstrap_ci(d, seed=5) == (lo, hi)
    assert bootstrap_ci(d, seed=6) != (lo, hi)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, math.nan])


def _brute_force_p(d: list[float]) -> float:
    obs = abs(sum(d))
    sums = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True)))
        for signs in itertools.product((-1, 1), repeat=len(d))
    ]
    return sum(s >= obs - 1e-12 for s in sums) / len(sums)


def test_permutation_test_hand_cases() -> None:
    """Hand-computed exact p-values: all equal signs, a single value, zeros, no data."""
    assert paired_permutation_test([1.0, 1.0, 1.0]) == 0.25  # only +++ and --- reach |3|
    assert paired_permutation_test([1.0] * 5) == 2 / 32
    assert paired_permutation_test([3.0]) == 1.0
    assert paired_permutation_test([0.0, 0.0]) == 1.0
    assert paired_permutation_test([]) == 1.0
    # [1, 2, 3]: |sum| = 6 only for +++/---; 4 for ++- (1+2-3=0 no) ... count by hand:
    # sign sums: 6, 0, 2, -4, 4, -2, 0, -6 -> |.| >= 6 twice -> 2/8
    assert paired_permutation_test([1.0, 2.0, 3.0]) == 0.25


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_permutation_exact_matches_brute_force(n: int) -> None:
    """Vectorized exact enumeration equals a plain loop over all 2**n sign assignments."""
    rng = np.random.default_rng(n)
    for _ in range(5):
        d = [float(x) for x in rng.integers(-3, 4, size=n)]  # integers: many ties
        assert paired_permutation_test(d) == pytest.approx(_brute_force_p(d))


def test_permutation_monte_carlo_agrees_with_exact() -> None:
    """Above the exact limit the Monte Carlo p-value is close to the exact one, never 0."""
    d = np.random.default_rng(3).normal(0.4, 1.0, size=16)
    exact = paired_permutation_test(d)
    mc = paired_permutation_test(d, exact_max_n=0, n_resamples=50_000, seed=1)
    assert mc == pytest.approx(exact, abs=0.01)
    assert paired_permutation_test(np.ones(40), n_resamples=999) == 1 / 1000


def test_compare_scores_fields() -> None:
    """Means, paired difference, win/tie/loss, relative improvement and dropped pairs."""
    m = compare_scores("q", [1.0, 2.0, 3.0, math.nan], [2.0, 2.0, 5.0, 1.0])
    assert (m.n, m.dropped) == (3, 1)
    assert m.mean_a == 2.0 and m.mean_b == 3.0 and m.diff == 1.0
    assert (m.win, m.tie, m.loss) == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert m.improvement == pytest.approx(0.5)
    assert compare_scores("z", [0.0, 0.0], [1.0, 1.0]).improvement is None  # A == 0


def test_false_positive_rate_synthetic() -> None:
    """Paired scores from one distribution, 400 repetitions: about 5% significant."""
    rng = np.random.default_rng(42)
    reps, n = 400, 30
    p_hits = ci_hits = 0
    for r in range(reps):
        a = rng.beta(2, 5, size=n)
        b = rng.beta(2, 5, size=n)
        m = compare_scores("x", a, b, n_resamples=2000, seed=r)
        p_hits += m.p_value < 0.05
        ci_hits += not (m.ci_low <= 0 <= m.ci_high)
    print(
        f"synthetic false-positive rate: permutation {p_hits / reps:.3f}, CI {ci_hits / reps:.3f}"
    )
    assert 0.01 <= p_hits / reps <= 0.10
    assert 0.01 <= ci_hits / reps <= 0.12
