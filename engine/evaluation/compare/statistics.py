"""Paired A/B statistics: bootstrap intervals and permutation tests of per-input differences.

Everything here is pure numpy, seeded and vectorized. :func:`compare_scores` turns two
aligned arrays of per-input scores into one :class:`MetricComparison`: the mean paired
difference ``d = B - A``, its percentile bootstrap interval (:func:`bootstrap_ci`), a
two-sided sign-flip permutation p-value (:func:`paired_permutation_test`), win/tie/loss
rates and the relative improvement ``(B - A) / |A|``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = (
    "MetricComparison",
    "bootstrap_ci",
    "compare_scores",
    "finite_or_none",
    "paired_permutation_test",
)

TIE_TOLERANCE = 1e-12
"""A per-input ``|B - A|`` at or below this is a tie."""

_CHUNK_ELEMENTS = 2_000_000
"""Elements of one resampling matrix: resamples are drawn in chunks of at most this size."""


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``diffs``.

    Draws ``n_resamples`` resamples of size n with replacement (seeded, vectorized in chunks)
    and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their
    means (numpy's default linear interpolation). Non-finite values must be removed first.
    ``(nan, nan)`` for no data; ``(d, d)`` for one value.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)  # (n,)
    if not np.all(np.isfinite(d)):
        raise ValueError("bootstrap_ci: diffs must be finite (drop failed pairs first)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = d.size
    if n == 0:
        return (math.nan, math.nan)
    if n == 1:
        return (float(d[0]), float(d[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)  # (B,)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (b, n)
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_permutation_test(
    diffs: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
    exact_max_n: int = 16,
) -> float:
    """Two-sided paired permutation (sign-flip) test of ``mean(diffs) == 0``.

    Under the null hypothesis the sign of each paired difference is a fair coin, so the
    p-value is the share of sign assignments whose ``|sum|`` is at least the observed one.
    With ``n <= exact_max_n`` all ``2**n`` assignments are enumerated (exact p-value);
    otherwise ``n_resamples`` random assignments are drawn (seeded, vectorized) and
    ``p = (1 + hits) / (1 + n_resamples)``, which never reports 0 and keeps the test valid.
    Returns 1.0 for no data or all-zero differences.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)  # (n,)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired_permutation_test: diffs must be finite")
    n = d.size
    observed = abs(float(d.sum()))
    if n == 0 or observed == 0.0:
        return 1.0
    # sums that equal the observed one up to float rounding count as "at least as extreme"
    thresh = observed - 1e-9 * float(np.abs(d).sum())
    if n <= exact_max_n:
        codes = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
        signs = ((codes >> np.arange(n)) & 1) * 2 - 1  # (2^n, n) every sign assignment
        hits = int(np.count_nonzero(np.abs(signs @ d) >= thresh))
        return hits / 2**n
    rng = np.random.default_rng(seed)
    hits = 0
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        b = min(n_resamples, start + rows) - start
        signs = rng.integers(0, 2, size=(b, n), dtype=np.int8) * 2 - 1  # (b, n)
        hits += int(np.count_nonzero(np.abs(signs @ d) >= thresh))
    return (1 + hits) / (1 + n_resamples)


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a float, or None when it is None, NaN or infinite (for JSON)."""
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of an A/B comparison; differences are ``B - A`` per input."""

    name: str
    """Metric name."""
    mean_a: float
    """Mean over inputs for model A."""
    mean_b: float
    """Mean over inputs for model B."""
    diff: float
    """Mean paired difference B - A."""
    ci_low: float
    """Lower end of the bootstrap confidence interval of ``diff``."""
    ci_high: float
    """Upper end of the bootstrap confidence interval of ``diff``."""
    p_value: float
    """Two-sided paired permutation p-value of ``diff == 0``."""
    win: float
    """Share of inputs where B scored higher."""
    tie: float
    """Share of inputs where they scored the same."""
    loss: float
    """Share of inputs where B scored lower."""
    improvement: float | None
    """Relative change ``(B - A) / |A|``; None when A's mean is 0 (or undefined)."""
    n: int
    """Paired inputs used."""
    dropped: int = 0
    """Inputs dropped because a side had no valid value."""

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether ``p_value < alpha``."""
        return math.isfinite(self.p_value) and self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain data; NaN becomes None."""
        return {
            "name": self.name,
            "mean_a": finite_or_none(self.mean_a),
            "mean_b": finite_or_none(self.mean_b),
            "diff": finite_or_none(self.diff),
            "ci_low": finite_or_none(self.ci_low),
            "ci_high": finite_or_none(self.ci_high),
            "p_value": finite_or_none(self.p_value),
            "win": finite_or_none(self.win),
            "tie": finite_or_none(self.tie),
            "loss": finite_or_none(self.loss),
            "improvement": finite_or_none(self.improvement),
            "n": self.n,
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricComparison:
        """Inverse of :meth:`to_dict` (None becomes NaN, except ``improvement``)."""

        def f(key: str) -> float:
            v = data.get(key)
            return math.nan if v is None else float(v)

        imp = data.get("improvement")
        return cls(
            name=str(data["name"]),
            mean_a=f("mean_a"),
            mean_b=f("mean_b"),
            diff=f("diff"),
            ci_low=f("ci_low"),
            ci_high=f("ci_high"),
            p_value=f("p_value"),
            win=f("win"),
            tie=f("tie"),
            loss=f("loss"),
            improvement=None if imp is None else float(imp),
            n=int(data.get("n", 0)),
            dropped=int(data.get("dropped", 0)),
        )


def compare_scores(
    name: str,
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> MetricComparison:
    """The A/B statistics of one metric from per-input scores (NaN marks a missing value).

    Inputs where either side is missing are dropped (counted in ``dropped``), so the
    remaining scores stay paired.
    """
    av = np.asarray(a, dtype=np.float64)  # (n,)
    bv = np.asarray(b, dtype=np.float64)  # (n,)
    if av.shape != bv.shape:
        raise ValueError(f"{name}: {av.shape} scores for A, {bv.shape} for B")
    ok = np.isfinite(av) & np.isfinite(bv)
    av, bv = av[ok], bv[ok]
    n = int(av.size)
    dropped = int(ok.size - n)
    if n == 0:
        nan = math.nan
        return MetricComparison(name, nan, nan, nan, nan, nan, nan, nan, nan, nan, None, 0, dropped)
    d = bv - av  # (n,)
    lo, hi = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    p = paired_permutation_test(d, n_resamples=n_resamples, seed=seed)
    mean_a, mean_b = float(av.mean()), float(bv.mean())
    return MetricComparison(
        name=name,
        mean_a=mean_a,
        mean_b=mean_b,
        diff=float(d.mean()),
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        win=float(np.mean(d > TIE_TOLERANCE)),
        tie=float(np.mean(np.abs(d) <= TIE_TOLERANCE)),
        loss=float(np.mean(d < -TIE_TOLERANCE)),
        improvement=(mean_b - mean_a) / abs(mean_a) if mean_a != 0 else None,
        n=n,
        dropped=dropped,
    )
