"""Advantages stage: group-relative advantages of scored groups, pure vectorized numpy.

The variant implemented is GRPO's outcome supervision (DeepSeekMath, Shao et al. 2024, §4.1.2):
every token of completion i of a group gets the same advantage

    A_i = (r_i - mean(r)) / (std(r) + eps)

with these options and departures, each named after the work it comes from:

- ``scale="group"``: the formula above (GRPO). ``std`` is the **unbiased** sample standard
  deviation (``ddof=1``), matching ``torch.std`` as used by TRL's ``GRPOTrainer`` and verl;
  the paper leaves it unspecified. ``eps`` is added to the std (TRL adds 1e-4), not to the
  variance.
- ``scale="batch"``: divide by the std of all valid rewards of the batch instead (``ddof=1``),
  as TRL's ``scale_rewards="batch"``; this keeps groups with a small spread from being blown up.
- ``scale="none"``: only subtract the group mean (Dr. GRPO, Liu et al. 2025), which removes the
  question-difficulty bias of dividing by the group std.
- ``leave_one_out=True``: member i's baseline is the mean of the *other* valid members (RLOO,
  Ahmadian et al. 2024), ``A_i = r_i - mean_{j != i}(r_j) = n / (n - 1) * (r_i - mean(r))``;
  with ``scale`` group or batch the result is still divided by the std.
- ``drop_zero_std=True``: groups whose rewards are all equal carry no learning signal and are
  dropped (DAPO's dynamic sampling, Yu et al. 2025): their advantages are NaN and
  ``dropped`` is True. Without it their advantages are exactly 0 and they only dilute the loss.

Failed rollouts (reward NaN) are **masked, never counted as 0**: means and stds are taken over
the valid members only and a masked rollout's advantage is NaN. A group with fewer than two
valid members has no spread to learn from: it is reported as zero-std, its valid member gets
advantage 0 (or the group is dropped).

A plain per-group loop that defines the same numbers lives with the tests
(``tests/learning/reference_advantages.py``); they and ``benchmarks/bench_advantages.py`` check
the vectorized version against it.
:class:`RunningNorm` keeps a running mean and std of rewards for the automatic reward scaling
option (``reward.normalize``).

Example::

    rewards = np.array([[0.0, 2.0, 4.0], [1.0, 1.0, np.nan]])   # (B=2, G=3), one failure
    adv = group_advantages(rewards, eps=0.0)
    adv.values        # [[-1, 0, 1], [0, 0, nan]]
    adv.zero_std      # [False, True]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import CheckpointError

__all__ = ("Advantages", "RunningNorm", "group_advantages")

Scale = Literal["group", "batch", "none"]
_SCALES = ("group", "batch", "none")


@dataclass(frozen=True, slots=True)
class Advantages:
    """Group-relative advantages of a batch of B groups of G rollouts, with group statistics.

    Attributes:
        values: (B, G) float64 advantages; NaN where the rollout is masked (failed) or its
            group was dropped.
        group_mean: (B,) mean reward of the valid members; NaN for a group with none.
        group_std: (B,) unbiased (ddof=1) std of the valid members' rewards; 0 for zero-std
            groups (including those with fewer than 2 valid members).
        zero_std: (B,) bool, True where the valid members' rewards are all equal or there are
            fewer than 2 valid members: such a group has no learning signal.
        frac_reward_zero_std: fraction of the B groups that are zero-std (0.0 when B is 0).
        dropped: (B,) bool, True for groups dropped by ``drop_zero_std``.
    """

    values: np.ndarray
    group_mean: np.ndarray
    group_std: np.ndarray
    zero_std: np.ndarray
    frac_reward_zero_std: float
    dropped: np.ndarray


def _check_args(rewards: ArrayLike, scale: str, eps: float) -> np.ndarray:
    """Validate arguments; return rewards as a (B, G) float64 array (may be the caller's)."""
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {', '.join(_SCALES)}; got {scale!r}")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    r = np.asarray(rewards, dtype=np.float64)  # read only: never modified
    if r.ndim != 2:
        raise ValueError(
            f"rewards must be a 2-D array of shape (B groups, G rollouts); got shape {r.shape}"
        )
    if r.shape[1] == 0:
        raise ValueError(f"rewards must have at least one rollout per group; got shape {r.shape}")
    if np.isinf(r).any():
        b, g = np.argwhere(np.isinf(r))[0]
        raise ValueError(
            f"rewards must be finite or NaN (NaN masks a failed rollout); "
            f"got {r[b, g]} at group {b}, rollout {g}"
        )
    return r


def group_advantages(
    rewards: ArrayLike,
    *,
    scale: Scale = "group",
    leave_one_out: bool = False,
    drop_zero_std: bool = False,
    eps: float = 1e-4,
) -> Advantages:
    """Group-relative advantages of a (B, G) reward array, NaN marking failed rollouts.

    Args:
        rewards: (B, G) rewards, one row per group (prompt); NaN where a rollout failed.
        scale: ``group`` divides by the group std (GRPO), ``batch`` by the std of all valid
            rewards in the batch, ``none`` does not divide (Dr. GRPO). Stds use ddof=1.
        leave_one_out: baseline each member with the mean of the other valid members (RLOO).
        drop_zero_std: give zero-std groups NaN advantages and mark them dropped (DAPO).
        eps: added to the std in the denominator.

    Returns:
        An :class:`Advantages`; see the module docstring for the exact definitions.

    Raises:
        ValueError: rewards not 2-D, with G = 0, containing +-inf, unknown ``scale`` or
            negative ``eps``.
    """
    r = _check_args(rewards, scale, eps)  # (B, G)
    B, G = r.shape
    rt, invalid, n = _transposed(r)
    s, mean, equal = _group_means(rt, invalid, n)
    A, ss, std, zero_std = _deviations(rt, invalid, n, mean, equal)

    # Baseline: A is r - group mean (GRPO). RLOO's mean of the other members gives
    # r_i - (s - r_i) / (n - 1) = n / (n - 1) * (r_i - mean).
    if leave_one_out:
        A *= n / np.maximum(n - 1, 1)

    denom: np.ndarray | None = None  # (B,)
    if scale == "group":
        denom = np.where(zero_std, 1.0, std + eps)
    elif scale == "batch" and not zero_std.all():
        denom = np.full(B, _batch_std(s, ss, n, mean) + eps)  # > 0: some group has spread
    if drop_zero_std and zero_std.any():
        denom = np.where(zero_std, np.nan, 1.0 if denom is None else denom)
    # Zero-std groups keep their exact 0 (denominator 1), or get NaN when dropped. One
    # broadcast divide is faster than masked assignment over the (G, B) array.
    if denom is not None:
        A /= denom
    np.copyto(A, np.nan, where=invalid)  # failed rollouts: NaN
    dropped = zero_std.copy() if drop_zero_std else np.zeros(B, dtype=bool)

    values = rt.reshape(B, G)  # reuse rt's memory, no longer needed, for the (B, G) result
    np.copyto(values, A.T)
    return Advantages(
        values=values,
        group_mean=mean,
        group_std=std,
        zero_std=zero_std,
        frac_reward_zero_std=float(zero_std.mean()) if B else 0.0,
        dropped=dropped,
    )


def _transposed(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a (G, B) copy of the (B, G) rewards, its mask of failed rollouts, valid members per
    group).

    The work happens in (G, B) layout: numpy reduces a short last axis (G = 8) row by row,
    several times slower than reducing axis 0 across contiguous rows. Only two (G, B) float
    buffers are allocated (page faults on fresh memory cost as much as the arithmetic here):
    this copy, and the advantages.
    """
    rt = np.array(r.T, order="C")
    invalid = np.isnan(rt)
    n = r.shape[1] - invalid.sum(axis=0)
    return rt, invalid, n


def _group_means(
    rt: np.ndarray, invalid: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums, means, all-equal) per group of the (G, B) rewards ``rt``; zeroes its masked
    entries in place, so that they count for nothing in sums.

    A group is all-equal with fewer than 2 valid members or when its valid rewards are equal,
    tested by max == min (fmax/fmin skip NaN), not by std == 0: rounding makes the std of
    [0.1, 0.1, 0.1] ~1e-17. The mean is NaN where a group has no valid member; for an
    all-equal group it is the common value exactly, so its deviations, hence its advantages,
    are exactly 0.
    """
    B = rt.shape[1]
    r_max = np.fmax.reduce(rt, axis=0)  # (B,), NaN for a group with no valid member
    r_min = np.fmin.reduce(rt, axis=0)  # (B,)
    equal = (n < 2) | (r_max == r_min)  # (B,)
    np.copyto(rt, 0.0, where=invalid)
    s = rt.sum(axis=0)  # (B,)
    mean = np.divide(s, n, out=np.full(B, np.nan), where=n > 0)  # (B,)
    mean = np.where(equal & (n > 0), r_max, mean)
    return s, mean, equal


def _deviations(
    rt: np.ndarray, invalid: np.ndarray, n: np.ndarray, mean: np.ndarray, equal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(deviations r - mean as (G, B), sums of their squares, stds, zero-std) per group.

    A two-pass unbiased std over the valid members (more accurate than E[r^2] - E[r]^2); a
    group is zero-std when all-equal or when its std is 0 (a spread below float resolution).
    """
    A = np.subtract(rt, mean)  # (G, B)
    np.copyto(A, 0.0, where=invalid)
    ss = np.einsum("gb,gb->b", A, A)  # (B,)
    std = np.sqrt(ss / np.maximum(n - 1, 1))  # (B,)
    zero_std = equal | (std == 0.0)  # (B,)
    std[zero_std] = 0.0
    if (tiny := zero_std & ~equal).any():  # rare: only with deviations around 1e-160
        A[:, tiny] = 0.0
    return A, ss, std, zero_std


def _batch_std(s: np.ndarray, ss: np.ndarray, n: np.ndarray, mean: np.ndarray) -> float:
    """Unbiased std of all valid rewards of the batch, from per-group statistics.

    Total sum of squares = within-group sum + between-group sum (both terms >= 0, so no
    cancellation): sum_b ss_b + sum_b n_b (mean_b - batch_mean)^2.
    """
    N = int(n.sum())
    if N < 2:
        return 0.0
    batch_mean = s.sum() / N
    has = n > 0
    between = np.dot(n[has], (mean[has] - batch_mean) ** 2)
    return float(np.sqrt((ss.sum() + between) / (N - 1)))


class RunningNorm:
    """Running mean and std of a reward stream, for automatic reward scaling.

    Example::

        norm = RunningNorm()
        norm.update(rewards)              # any shape; NaN (failed rollouts) is ignored
        scaled = norm.normalize(rewards)  # (r - mean) / (std + eps); NaN stays NaN
        ckpt = norm.state()               # plain JSON-able dict
        norm = RunningNorm.from_state(ckpt)

    Batches are merged with the parallel form of Welford's algorithm (Chan, Golub and LeVeque
    1979), so the result equals the mean and std of all values seen, in any batch split,
    without keeping them. ``std`` is the population std (ddof=0), as in the running
    normalizers of Stable-Baselines3 and Gymnasium; it is defined from the first value on.
    Before any value, :meth:`normalize` is the identity.

    Attributes:
        count: values seen (NaN excluded).
        mean: mean of the values seen.
        eps: added to the std in :meth:`normalize`.
    """

    __slots__ = ("_m2", "count", "eps", "mean")

    def __init__(self, eps: float = 1e-8) -> None:
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
        self.count: int = 0
        self.mean: float = 0.0
        self._m2: float = 0.0  # sum of squared deviations from the mean (Welford's M2)
        self.eps: float = eps

    @property
    def var(self) -> float:
        """Population variance (ddof=0) of the values seen; 0 before any value."""
        return self._m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        """Population std (ddof=0) of the values seen; 0 before any value."""
        return math.sqrt(self.var)

    def update(self, x: ArrayLike) -> None:
        """Fold a batch of values (any shape) into the running statistics; NaN is skipped.

        Raises:
            ValueError: a value is +-inf.
        """
        xb = np.asarray(x, dtype=np.float64).ravel()
        xb = xb[~np.isnan(xb)]
        if np.isinf(xb).any():
            raise ValueError("RunningNorm.update: values must be finite or NaN")
        n_b = int(xb.size)
        if n_b == 0:
            return
        mean_b = float(xb.mean())
        m2_b = float(np.sum((xb - mean_b) ** 2))
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self._m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    def normalize(self, x: ArrayLike) -> np.ndarray:
        """``(x - mean) / (std + eps)`` as a new float64 array; the identity before any update."""
        xa = np.array(x, dtype=np.float64)
        if self.count == 0:
            return xa
        return (xa - self.mean) / (self.std + self.eps)

    def state(self) -> dict[str, Any]:
        """The statistics as a plain dict (JSON-able) for checkpoints."""
        return {"count": self.count, "mean": self.mean, "m2": self._m2, "eps": self.eps}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RunningNorm:
        """Rebuild from :meth:`state`.

        Raises:
            CheckpointError: a key is missing or a value is invalid.
        """
        try:
            count, mean, m2, eps = state["count"], state["mean"], state["m2"], state["eps"]
        except KeyError as exc:
            raise CheckpointError(f"RunningNorm state is missing {exc.args[0]!r}") from None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CheckpointError(f"RunningNorm state: count must be an int >= 0; got {count!r}")
        for key, v in (("mean", mean), ("m2", m2), ("eps", eps)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise CheckpointError(
                    f"RunningNorm state: {key} must be a finite number; got {v!r}"
                )
        if m2 < 0 or eps < 0:
            raise CheckpointError("RunningNorm state: m2 and eps must be >= 0")
        norm = cls(eps=float(eps))
        norm.count, norm.mean, norm._m2 = count, float(mean), float(m2)
        return norm

    def __repr__(self) -> str:
        return f"RunningNorm(count={self.count}, mean={self.mean:.6g}, std={self.std:.6g})"
