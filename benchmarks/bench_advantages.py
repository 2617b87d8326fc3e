"""Benchmark: vectorized group advantages against idiomatic numpy and a per-group loop.

All run on the same (B, G) rewards with about 1% failed rollouts (NaN), in the same process:

- ``engine``: :func:`engine.learning.advantages.group_advantages` (advantages and the group
  statistics: means, stds, zero-std and dropped flags);
- ``numpy``: the fair peer, what one writes with numpy: ``np.nanmean`` / ``np.nanstd``
  (``ddof=1``) per group along the axis, ``(r - mean) / (std + eps)`` (a group with fewer than
  two valid members has std 0, as in the engine);
- ``naive loop``: the reference per-group Python loop (``tests/learning/reference_advantages.py``).

The results must agree (``np.allclose`` with ``equal_nan``) before any time is printed. The
engine and numpy run alternately, ``--repeats`` rounds of one run each (on a shared machine a
load spike then hits both arms alike, not the one that happened to run first); each is
reported as its best and median run, the ratio as the median of the rounds' ratios. The naive
loop runs once, over the whole batch (not extrapolated). The numpy arm covers ``--scale`` and
``--leave-one-out``; with ``--drop-zero-std`` it is left out (it has no notion of a dropped group).

Usage::

    python -m benchmarks.bench_advantages                      # 1,000,000 rollouts, G = 8
    python -m benchmarks.bench_advantages --repeats 9          # steadier on a loaded machine
    python -m benchmarks.bench_advantages --rollouts 100000 --group-size 16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.learning.advantages import Advantages, group_advantages
from tests.learning.reference_advantages import naive_group_advantages


def _agree(a: Advantages, b: Advantages) -> bool:
    return (
        np.allclose(a.values, b.values, rtol=1e-9, atol=1e-12, equal_nan=True)
        and np.allclose(a.group_mean, b.group_mean, equal_nan=True)
        and np.allclose(a.group_std, b.group_std)
        and np.array_equal(a.zero_std, b.zero_std)
        and np.array_equal(a.dropped, b.dropped)
    )


def numpy_advantages(
    rewards: np.ndarray, *, scale: str = "group", leave_one_out: bool = False, eps: float = 1e-4
) -> np.ndarray:
    """Group advantages as idiomatic numpy: nan-aware mean and std along the group axis."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups, fewer than 2 valid
        mean = np.nanmean(rewards, axis=1, keepdims=True)
        centred = rewards - mean
        if leave_one_out:
            n = np.sum(~np.isnan(rewards), axis=1, keepdims=True)
            centred = np.where(n > 1, centred * n / (n - 1), 0.0) + rewards * 0.0  # keeps NaN
        if scale == "none":
            return centred
        if scale == "batch":
            return centred / (np.nanstd(rewards, ddof=1) + eps)
        std = np.nan_to_num(np.nanstd(rewards, axis=1, ddof=1, keepdims=True))
        return centred / (std + eps)


def _alternate(
    fns: list[Callable[[], object]], repeats: int
) -> tuple[list[list[float]], list[object]]:
    """Run each of ``fns`` once per round, in turn, for ``repeats`` rounds: the times (one
    list per function, by round) and each function's last result."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return times, outs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print both times and their ratio; exit 1 if results disagree."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=1_000_000, help="total rollouts B * G")
    ap.add_argument("--group-size", type=int, default=8, help="G, rollouts per group")
    ap.add_argument("--nan-frac", type=float, default=0.01, help="fraction of failed rollouts")
    ap.add_argument("--repeats", type=int, default=15, help="alternating rounds of engine/numpy")
    ap.add_argument("--scale", choices=["group", "batch", "none"], default="group")
    ap.add_argument("--leave-one-out", action="store_true")
    ap.add_argument("--drop-zero-std", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    G = args.group_size
    B = args.rollouts // G
    rng = np.random.default_rng(args.seed)
    # Verifiable 0/1 rewards with a per-prompt difficulty p ~ Beta(0.5, 0.5), as in GRPO on
    # math tasks: many groups are all-0 or all-1 (zero-std), the rest have spread.
    p = rng.beta(0.5, 0.5, size=(B, 1))  # (B, 1) success probability per prompt
    rewards = (rng.random((B, G)) < p).astype(np.float64)  # (B, G)
    rewards[rng.random((B, G)) < args.nan_frac] = np.nan
    kw = dict(scale=args.scale, leave_one_out=args.leave_one_out, drop_zero_std=args.drop_zero_std)

    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, {platform.system()}"
    )
    print(
        f"rewards: B={B:,} groups x G={G} = {B * G:,} rollouts, "
        f"{np.isnan(rewards).mean():.2%} NaN, options {kw}"
    )

    fns: list[Callable[[], object]] = [lambda: group_advantages(rewards, **kw)]  # type: ignore[arg-type]
    if not args.drop_zero_std:
        np_kw = dict(scale=args.scale, leave_one_out=args.leave_one_out)
        fns.append(lambda: numpy_advantages(rewards, **np_kw))  # type: ignore[arg-type]
    times, outs = _alternate(fns, args.repeats)
    fast, t_fast = outs[0], min(times[0])
    t_np = min(times[1]) if len(fns) > 1 else None
    peer = outs[1] if len(fns) > 1 else None

    t0 = time.perf_counter()
    slow = naive_group_advantages(rewards, **kw)  # type: ignore[arg-type]
    t_slow = time.perf_counter() - t0

    if not _agree(fast, slow):  # type: ignore[arg-type]
        print("MISMATCH: vectorized and naive results differ", file=sys.stderr)
        return 1
    if t_np is not None and not np.allclose(
        fast.values,  # type: ignore[union-attr]
        peer,  # type: ignore[arg-type]
        rtol=1e-9,
        atol=1e-12,
        equal_nan=True,
    ):
        print("MISMATCH: engine and numpy advantages differ", file=sys.stderr)
        return 1
    print(f"agree: yes (frac_reward_zero_std={fast.frac_reward_zero_std:.4f})")  # type: ignore[union-attr]
    rounds = f"{args.repeats} alternating rounds"
    print(
        f"engine:     {t_fast * 1e3:9.2f} ms best, {statistics.median(times[0]) * 1e3:.2f} ms "
        f"median ({rounds})"
    )
    if t_np is not None:
        print(
            f"numpy:      {t_np * 1e3:9.2f} ms best, {statistics.median(times[1]) * 1e3:.2f} ms "
            f"median (nanmean/nanstd per group)"
        )
    print(f"naive loop: {t_slow * 1e3:9.1f} ms  (one full run)")
    if t_np is not None:
        ratios = [b / a for a, b in zip(times[0], times[1], strict=True)]
        print(
            f"engine vs numpy (fair peer): {statistics.median(ratios):6.2f}x median of rounds "
            f"({min(ratios):.2f}-{max(ratios):.2f}), {t_np / t_fast:.2f}x best vs best"
        )
    print(f"engine vs naive loop:        {t_slow / t_fast:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
