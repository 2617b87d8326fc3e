"""The learner: staleness, advantages, mini-batch updates asked of the policy, versions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from engine.config.loading import load_config
from engine.config.sections import GRPOConfig, RunConfig
from engine.learning.learner import Learner, ScoredBatch
from engine.learning.schedule import lr_at
from engine.policies.tinylm import TinyLM
from engine.types import Example, Group, Rollout, Sample


def small(*extra: str) -> RunConfig:
    return load_config(None, ["grpo.group_size=4", "grpo.mini_batch_size=2", *extra])


def _group(version: int, rewards: list[float]) -> Group:
    g = Group(f"g{version}", 0, Example("e", "p"), version)
    g.rollouts = [
        Rollout(
            g.group_id,
            i,
            version,
            Sample("x", token_ids=np.array([1]), logprobs=np.array([-1.0])),
            reward=r,
        )
        for i, r in enumerate(rewards)
    ]
    return g


class Recorder(TinyLM):
    """TinyLM whose update records what it was given and changes nothing."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.seen: list[int] = []
        self.advantages: list[float] = []
        self.lrs: list[float] = []

    def update(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, *, grpo: GRPOConfig, lr: float
    ) -> dict[str, float]:
        self.seen.extend(r.policy_version for r in rollouts)
        self.advantages.extend(float(a) for a in advantages)
        self.lrs.append(lr)
        return {"policy_loss": 0.0}


async def test_learner_drops_and_counts_stale_groups() -> None:
    """Groups older than max_staleness versions are dropped and counted, not learned from."""
    cfg = small("grpo.max_staleness=1")

    pol = Recorder(cfg.tinylm, seed=0)
    learner = Learner(pol, cfg, total_steps=10)
    for step in range(3):
        await learner.update(ScoredBatch(step, [_group(learner.version, [0.0, 1.0])]))
    assert learner.version == 3 and learner.stale_dropped == 0
    m = await learner.update(ScoredBatch(3, [_group(1, [0.0, 1.0]), _group(2, [1.0, 0.0])]))
    assert learner.stale_dropped == 1 and m["stale_dropped"] == 1
    assert 1 not in pol.seen[-2:]


async def test_failed_rollouts_are_masked_not_zero() -> None:
    """A failed rollout gets no advantage and is left out of the update."""
    cfg = small()
    pol = Recorder(cfg.tinylm, seed=0)
    learner = Learner(pol, cfg, total_steps=10)
    g = _group(0, [1.0, 0.0, 0.5, 0.0])
    g.rollouts[1].error = "reward 'x' failed"
    g.rollouts[1].reward = math.nan
    m = await learner.update(ScoredBatch(0, [g]))
    assert math.isnan(g.rollouts[1].advantage)
    assert m["rollouts_failed"] == 1
    assert m["reward"] == pytest.approx(0.5)  # mean of 1.0, 0.5, 0.0: the failure is not a 0
    assert len(pol.advantages) == 3  # only the scored rollouts take part in the update
    assert sum(pol.advantages) == pytest.approx(0.0)


async def test_learner_asks_the_policy_for_epochs_times_mini_batches_steps() -> None:
    """Each batch is epochs x mini-batches policy updates at the schedule's learning rate."""
    cfg = small("grpo.epochs=3", "optim.warmup_steps=4")
    pol = Recorder(cfg.tinylm, seed=0)
    learner = Learner(pol, cfg, total_steps=10)
    assert pol.optimizer is not None and pol.optimizer.optim == cfg.optim
    groups = [_group(0, [0.0, 1.0]) for _ in range(5)]  # mini-batches of 2, 2 and 1 groups
    m = await learner.update(ScoredBatch(1, groups))
    assert m["optimizer_steps"] == 9 and len(pol.lrs) == 9
    assert pol.lrs == [lr_at(1, cfg.optim, 10)] * 9 and m["lr"] == pol.lrs[0]
    assert learner.version == 1 and m["policy_version"] == 1
