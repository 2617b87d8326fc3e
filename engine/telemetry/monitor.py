"""Telemetry: convergence indicators computed from a run's per-step rewards.

:func:`convergence` fits a least-squares line to the last ``window`` rewards and reports the
slope with a t-distribution confidence interval, so a person (or the trainer's summary) can
tell "still improving" from "plateaued" from "too noisy to say"::

    >>> c = convergence([0.10, 0.12, 0.15, 0.16, 0.18, 0.21], window=6)
    >>> c["trend"], round(c["slope"], 4)
    ('improving', 0.0206)

The t quantile is computed here without scipy: the Student t CDF through the regularized
incomplete beta function (continued fraction, as in Numerical Recipes 6.4), inverted by
bisection. It agrees with published tables to every printed digit
(``tests/telemetry/test_monitor.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

__all__ = ("Convergence", "convergence", "describe", "t_cdf", "t_quantile")

_CF_EPS = 1e-15
"""Relative accuracy at which the continued fraction stops."""
_CF_TINY = 1e-300
"""Stands in for a zero denominator in Lentz's method."""
_CF_MAX_ITER = 500


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df > 0)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. 0.975, 9 -> 2.262).

    Bisection on :func:`t_cdf`, to about 1e-12 relative accuracy.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


class Convergence(TypedDict):
    """What :func:`convergence` returns: a JSON-able dict, keys as its docstring lists."""

    window: int
    start: int
    n: int
    confidence: float
    slope: float | None
    ci_low: float | None
    ci_high: float | None
    stderr: float | None
    intercept: float | None
    change: float | None
    mean: float | None
    plateaued: bool
    trend: str


def convergence(
    rewards: Sequence[float],
    window: int = 10,
    *,
    confidence: float = 0.95,
    tolerance: float = 0.05,
) -> Convergence:
    """The reward trend over the last ``window`` steps, with a confidence interval.

    Fits ``reward = intercept + slope * i`` by least squares to the last ``window`` values
    (``i`` = 0 .. window-1 within the window; non-finite rewards are skipped, keeping their
    positions) and gives the slope's ``confidence`` interval from the t distribution with
    ``n - 2`` degrees of freedom.

    Returns a JSON-able dict:

    * ``slope`` (reward per step), ``ci_low``, ``ci_high``, ``stderr``, ``intercept``;
    * ``change``: the fitted change across the window, ``slope * (len(window) - 1)``;
    * ``mean``: mean reward of the window; ``n``: finite points used; ``window``;
      ``start``: index in ``rewards`` where the window begins;
    * ``plateaued``: the interval contains 0 **and** ``|change| <= tolerance * |mean|``
      (``tolerance`` itself when the mean is 0): no detectable trend, and any trend there is
      small relative to the reward level;
    * ``trend``: ``improving`` (interval above 0), ``declining`` (below 0), ``plateaued``,
      or ``unclear`` (interval contains 0 but the fitted change is not small: too noisy);
    * with fewer than 3 finite points the numbers are None, ``plateaued`` is False and
      ``trend`` is ``insufficient data``.
    """
    if window < 3:
        raise ValueError(f"window must be >= 3, got {window}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    vals = np.asarray(list(rewards)[-window:], dtype=np.float64)  # (w,)
    ok = np.isfinite(vals)
    x, y = np.arange(vals.size, dtype=np.float64)[ok], vals[ok]
    n = int(y.size)
    out = _insufficient(window, max(0, len(rewards) - window), n, confidence)
    if n < 3:
        out["mean"] = float(y.mean()) if n else None
        return out
    slope, intercept, stderr = _fit_line(x, y)
    half = t_quantile(0.5 + confidence / 2.0, n - 2) * stderr
    lo, hi = slope - half, slope + half
    change = slope * (vals.size - 1)
    mean = float(y.mean())
    small = abs(change) <= tolerance * (abs(mean) if mean != 0 else 1.0)
    plateaued = bool(lo <= 0.0 <= hi and small)
    out.update(
        slope=slope,
        ci_low=lo,
        ci_high=hi,
        stderr=stderr,
        intercept=intercept,
        change=change,
        mean=mean,
        plateaued=plateaued,
        trend=_trend(lo, hi, plateaued),
    )
    return out


def _insufficient(window: int, start: int, n: int, confidence: float) -> Convergence:
    """The result without a fit: no numbers, no plateau, ``insufficient data``."""
    return {
        "window": window,
        "start": start,
        "n": n,
        "confidence": confidence,
        "slope": None,
        "ci_low": None,
        "ci_high": None,
        "stderr": None,
        "intercept": None,
        "change": None,
        "mean": None,
        "plateaued": False,
        "trend": "insufficient data",
    }


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y = intercept + slope * x``: (slope, intercept, stderr of the slope)."""
    xm = x - x.mean()
    sxx = float(xm @ xm)
    slope = float(xm @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    s2 = float(resid @ resid) / (y.size - 2)
    return slope, intercept, math.sqrt(s2 / sxx)


def _trend(lo: float, hi: float, plateaued: bool) -> str:
    """The verdict on a slope interval [lo, hi]."""
    if lo > 0:
        return "improving"
    if hi < 0:
        return "declining"
    return "plateaued" if plateaued else "unclear"


def describe(conv: Mapping[str, Any] | None) -> str:
    """One line for a :func:`convergence` result, as the CLI's run summary shows it.

    ``improving: slope +0.0021/step, 95% CI [+0.0008, +0.0034], last 10 steps``.
    """
    if not conv or conv.get("slope") is None:
        return "insufficient data (fewer than 3 steps)"
    pct = round(float(conv.get("confidence", 0.95)) * 100)

    def f(x: float) -> str:
        return f"{round(x, 4) + 0.0:+.4f}"  # + 0.0: no "-0.0000"

    return (
        f"{conv['trend']}: slope {f(conv['slope'])}/step, {pct}% CI "
        f"[{f(conv['ci_low'])}, {f(conv['ci_high'])}], last {conv['n']} steps"
    )
