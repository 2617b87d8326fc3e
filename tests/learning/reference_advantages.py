"""The reference group advantages: a per-group loop that the vectorized engine function must
equal. Used by ``tests/learning/test_advantages.py`` and ``benchmarks/bench_advantages.py``."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from engine.learning.advantages import Advantages, Scale

__all__ = ("naive_group_advantages",)


def naive_group_advantages(
    rewards: ArrayLike,
    *,
    scale: Scale = "group",
    leave_one_out: bool = False,
    drop_zero_std: bool = False,
    eps: float = 1e-4,
) -> Advantages:
    """:func:`~engine.learning.advantages.group_advantages` as a plain loop, one group at a time.

    Slow on purpose and written to be obviously right; the tests and the benchmark compare the
    vectorized version against it. It takes valid arguments only (the engine's function
    validates them).
    """
    r = np.asarray(rewards, dtype=np.float64)  # (B, G)
    B, G = r.shape
    all_valid = r[~np.isnan(r)]
    batch_std = float(np.std(all_valid, ddof=1)) if all_valid.size >= 2 else 0.0

    values = np.full((B, G), np.nan)
    group_mean = np.full(B, np.nan)
    group_std = np.zeros(B)
    zero_std = np.zeros(B, dtype=bool)
    dropped = np.zeros(B, dtype=bool)
    for b in range(B):
        idx = [g for g in range(G) if not math.isnan(r[b, g])]  # valid members of group b
        x = r[b, idx]
        if len(idx) > 0:
            group_mean[b] = np.mean(x)
        zero = len(idx) < 2 or x.max() == x.min()
        if not zero:
            group_std[b] = np.std(x, ddof=1)
            zero = group_std[b] == 0.0
        if zero:
            group_std[b] = 0.0
            zero_std[b] = True
            if drop_zero_std:
                dropped[b] = True
            else:
                values[b, idx] = 0.0
            continue
        for k, g in enumerate(idx):
            baseline = np.mean(np.delete(x, k)) if leave_one_out else group_mean[b]
            a = x[k] - baseline
            if scale == "group":
                a /= group_std[b] + eps
            elif scale == "batch":
                a /= batch_std + eps
            values[b, g] = a
    return Advantages(
        values=values,
        group_mean=group_mean,
        group_std=group_std,
        zero_std=zero_std,
        frac_reward_zero_std=float(zero_std.mean()) if B else 0.0,
        dropped=dropped,
    )
