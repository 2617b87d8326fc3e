"""Convergence monitoring: the t quantile without scipy, the slope and its interval, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.telemetry.monitor import convergence, describe, t_cdf, t_quantile

# Two-sided 95% and 99% critical values from a standard t table (3 decimals).
T_TABLE = {
    1: (12.706, 63.657),
    2: (4.303, 9.925),
    3: (3.182, 5.841),
    4: (2.776, 4.604),
    5: (2.571, 4.032),
    8: (2.306, 3.355),
    10: (2.228, 3.169),
    15: (2.131, 2.947),
    20: (2.086, 2.845),
    30: (2.042, 2.750),
    60: (2.000, 2.660),
    120: (1.980, 2.617),
}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_table(df: int) -> None:
    """t quantiles agree with a printed table to its 3 decimals."""
    q975, q995 = T_TABLE[df]
    assert round(t_quantile(0.975, df), 3) == q975
    assert round(t_quantile(0.995, df), 3) == q995


def test_t_quantile_closed_forms_and_limits() -> None:
    """df=1 (Cauchy) and df=2 have closed forms; large df tends to the normal; symmetry."""
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        assert t_quantile(1 - p, 7) == pytest.approx(-t_quantile(p, 7), rel=1e-12)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.5, 3) == 0.0
    assert t_cdf(t_quantile(0.9, 6), 6) == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_convergence_exact_line_and_hand_computed_ci() -> None:
    """A perfect line has its slope and a zero-width CI; a hand case has the textbook CI."""
    c = convergence([1.0 + 0.5 * i for i in range(10)])
    assert c["slope"] == pytest.approx(0.5) and c["ci_low"] == pytest.approx(0.5)
    assert c["trend"] == "improving" and not c["plateaued"]
    # y = 0, 1, 1, 3 at x = 0..3: slope = 0.9, residual SS = 0.7, sxx = 5, df = 2
    c = convergence([0.0, 1.0, 1.0, 3.0], window=4)
    se = math.sqrt(0.7 / 2 / 5)
    assert c["slope"] == pytest.approx(0.9)
    assert c["stderr"] == pytest.approx(se)
    assert c["ci_low"] == pytest.approx(0.9 - 4.302653 * se, rel=1e-6)
    assert c["ci_high"] == pytest.approx(0.9 + 4.302653 * se, rel=1e-6)


def test_convergence_uses_the_last_window_and_skips_nan() -> None:
    """Only the last ``window`` values count; NaN is skipped but keeps its position."""
    rising_then_flat = [0.1 * i for i in range(20)] + [2.0] * 10
    c = convergence(rising_then_flat, window=10)
    assert c["start"] == 20 and c["slope"] == 0.0 and c["plateaued"] and c["trend"] == "plateaued"
    with_gap = [0.0, 1.0, math.nan, 3.0, 4.0]
    c = convergence(with_gap, window=5)
    assert c["n"] == 4 and c["slope"] == pytest.approx(1.0)


def test_convergence_noise_is_plateau_or_unclear_never_a_trend_at_rate() -> None:
    """Flat noisy rewards give 'improving'/'declining' at about the 5% false-positive rate."""
    rng = np.random.default_rng(0)
    trends = [convergence(list(0.5 + 0.01 * rng.standard_normal(10)))["trend"] for _ in range(400)]
    false_trend = sum(t in ("improving", "declining") for t in trends) / len(trends)
    assert 0.01 <= false_trend <= 0.10
    assert trends.count("plateaued") > 300  # small noise around 0.5: mostly a plateau


def test_convergence_noisy_rise_is_unclear_not_plateau() -> None:
    """A large fitted change with a CI spanning 0 is 'unclear', not a plateau."""
    c = convergence([0.0, 1.0, -1.0, 2.0, 0.5, 1.5], window=6, tolerance=0.05)
    assert c["ci_low"] < 0 < c["ci_high"]
    assert c["trend"] == "unclear" and not c["plateaued"]


def test_convergence_too_few_points() -> None:
    """Fewer than 3 finite rewards: no numbers, no plateau, and a readable description."""
    c = convergence([0.2, math.nan, 0.3])
    assert c["slope"] is None and c["plateaued"] is False
    assert c["trend"] == "insufficient data"
    assert "insufficient" in describe(c)
    assert convergence([])["n"] == 0
    with pytest.raises(ValueError):
        convergence([1.0, 2.0, 3.0], window=2)


def test_describe_is_one_line() -> None:
    """describe() names the trend, the slope and the interval on one line."""
    line = describe(convergence([0.1, 0.2, 0.3, 0.4]))
    assert line.startswith("improving: slope +0.1000/step, 95% CI [") and "\n" not in line
    flat = describe(convergence([1.0, 1.0, 1.0, 1.0 - 1e-9]))
    assert "slope +0.0000/step" in flat  # never "-0.0000"
