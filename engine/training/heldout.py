"""Held-out evaluation during training: greedy decoding of the policy on held-out examples.

One output per example from one snapshot, scored by the run's rewarder; the mean reward is
``eval/reward`` in metrics.jsonl. An example whose generation or scoring failed counts in
``eval/failures`` and is left out of the mean: a failed request's empty text is never scored
(it would score 0), as in ``python -m engine eval`` (:mod:`engine.rollout.evaluate`). When
every example failed, ``eval/reward`` is NaN (``null`` in metrics.jsonl), not 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import numpy as np

from ..environments.runner import EpisodeRunner, episode_score
from ..policies.base import Policy, PolicySnapshot
from ..rewards.rewarder import Rewarder
from ..types import Example

__all__ = ("evaluate_heldout", "finite_mean")


def finite_mean(xs: Sequence[float | None]) -> float:
    """The mean of the finite values of ``xs``; NaN when there is none."""
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else math.nan


async def evaluate_heldout(
    policy: Policy,
    rewarder: Rewarder,
    snap: PolicySnapshot,
    examples: Sequence[Example],
    seed: int,
    *,
    episodes: EpisodeRunner | None = None,
) -> dict[str, float | int]:
    """``eval/reward``, ``eval/n`` and ``eval/failures`` of ``snap`` on ``examples``; example
    ``i`` is decoded with a generator seeded by ``(seed, i)``. With ``episodes`` (an
    ``[environment]``), each example is one greedy episode scored by its environment."""
    rewards: list[float] = [math.nan] * len(examples)
    failures = 0

    async def one(i: int, ex: Example) -> None:
        nonlocal failures
        try:
            rng = np.random.default_rng([seed, i])
            if episodes is not None:
                samples = await episodes.generate(policy, snap, ex, 1, rng, greedy=True)
            else:
                samples = await policy.generate(snap, ex, 1, rng, greedy=True)
            if not samples or samples[0].error:  # a failed request has no output to score
                failures += 1
                return
            if samples[0].episode is not None:
                score = episode_score(samples[0])
            else:
                score = await rewarder.score(ex, samples[0].text)
            if score.error or not math.isfinite(score.reward):
                failures += 1
                return
            rewards[i] = score.reward
        except Exception:
            failures += 1

    async with anyio.create_task_group() as tg:
        for i, ex in enumerate(examples):
            tg.start_soon(one, i, ex)
    return {"eval/reward": finite_mean(rewards), "eval/n": len(examples), "eval/failures": failures}
