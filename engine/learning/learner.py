"""Learner stage: the optimizer actor, the only one that updates the policy.

The learner receives scored batches (in step order) and, for each one:

1. drops groups that are too stale (``version - group.policy_version > max_staleness``), counted;
2. computes group-relative advantages over the (B, G) reward array
   (:mod:`engine.learning.advantages`);
3. splits the surviving groups into mini-batches of ``mini_batch_size`` groups and, for
   ``epochs`` passes, asks the policy for one optimizer step per mini-batch on the GRPO loss
   at the scheduled learning rate (:meth:`~engine.policies.base.Policy.update`);
4. bumps the policy version and publishes a frozen snapshot for generation.

Steps 2-3 run in a worker thread, so the event loop keeps generating the next batch. Only this
actor mutates parameters; generation reads immutable :class:`PolicySnapshot` objects.

Generation of batch ``k`` uses the snapshot of version ``max(0, k - max_staleness)`` exactly
(waiting for it if needed). That keeps generation up to ``max_staleness`` versions ahead of the
learner *and* makes a run a pure function of its seed: the same samples come out however the
tasks interleave, and a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from ..config.sections import RunConfig
from ..errors import CheckpointError
from ..policies.base import Policy, PolicySnapshot
from ..types import Group, Rollout
from .advantages import RunningNorm, group_advantages
from .schedule import lr_at

__all__ = ("Learner", "ScoredBatch", "snapshot_version_for")


def snapshot_version_for(step: int, max_staleness: int) -> int:
    """The policy version that generates batch ``step``."""
    return max(0, step - max_staleness)


@dataclass(slots=True)
class ScoredBatch:
    """All groups of one sampler batch, scored, ready for the learner.

    Attributes:
        step: the batch index.
        groups: its groups, in sampler order.
        gen_time: seconds the batch took to generate and score.
        rollout_metrics: the batch's group counters (:mod:`engine.rollout.groups`), for the
            step's metrics line.
    """

    step: int
    groups: list[Group]
    gen_time: float = 0.0
    rollout_metrics: dict[str, float] = field(default_factory=dict)


def _rewards_matrix(groups: Sequence[Group]) -> np.ndarray:
    """(B, G_max) rewards, NaN-padded where a group is smaller (shrunk) or a member failed."""
    width = max(len(g.rollouts) for g in groups)
    out = np.full((len(groups), width), np.nan)  # (B, G)
    for i, g in enumerate(groups):
        out[i, : len(g.rollouts)] = g.rewards()
    return out


def _mini_batches(
    groups: Sequence[Group], mini_batch_size: int
) -> list[tuple[list[Rollout], np.ndarray]]:
    """Mini-batches of whole groups: the rollouts with a finite advantage and those advantages."""
    chunks: list[tuple[list[Rollout], np.ndarray]] = []
    for start in range(0, len(groups), mini_batch_size):
        items = [
            r
            for g in groups[start : start + mini_batch_size]
            for r in g.rollouts
            if r.ok and math.isfinite(r.advantage)
        ]
        if items:
            chunks.append((items, np.array([r.advantage for r in items])))
    return chunks


class Learner:
    """The optimizer actor; see the module docstring.

    Example::

        learner = Learner(policy, config, total_steps=config.steps)
        snap = await learner.snapshot_at(0)          # generation side
        metrics = await learner.update(scored_batch) # learner side, in batch order

    The policy takes each optimizer step itself (:meth:`Policy.update`); the learner gives it
    the run's optimizer settings once, here, and each step's learning rate.

    Attributes:
        policy: the policy; only this actor updates it.
        config: the run config (``grpo``, ``optim``, ``reward.normalize``).
        total_steps: the run's length, for the learning-rate schedule.
        version: the policy version, the number of batches applied.
        stale_dropped: groups dropped for staleness, in total.
        norm: the running reward scale when ``reward.normalize`` is set, else None.
    """

    def __init__(self, policy: Policy, config: RunConfig, *, total_steps: int) -> None:
        self.policy = policy
        self.config = config
        self.total_steps = total_steps
        policy.configure_optimizer(config.optim)
        self.version = 0
        self.stale_dropped = 0
        self.norm = RunningNorm() if config.reward.normalize else None
        self._snapshots: dict[int, PolicySnapshot] = {}
        """The versions generation may still ask for."""
        self._published = anyio.Event()
        """Set when a new version is published."""
        self.publish()

    # ----------------------------------------------------------------------- snapshots

    def publish(self) -> None:
        """Freeze the current parameters as ``self.version`` and wake waiting generators."""
        self._snapshots[self.version] = self.policy.snapshot(self.version)
        oldest = self.version - self.config.grpo.max_staleness
        for v in [v for v in self._snapshots if v < oldest]:
            del self._snapshots[v]
        self._published.set()
        self._published = anyio.Event()

    async def snapshot_at(self, version: int) -> PolicySnapshot:
        """The snapshot of ``version``, waiting until the learner has published it."""
        while version > self.version:
            await self._published.wait()
        try:
            return self._snapshots[version]
        except KeyError:
            raise RuntimeError(
                f"snapshot {version} is older than max_staleness allows (now {self.version})"
            ) from None

    # ----------------------------------------------------------------------- update

    async def update(self, batch: ScoredBatch) -> dict[str, Any]:
        """Apply one batch: advantages, epochs x mini-batches of optimizer steps, new version."""
        s = self.config.grpo.max_staleness
        fresh = []
        for g in batch.groups:
            if self.version - g.policy_version > s:
                self.stale_dropped += 1
            else:
                fresh.append(g)
        lr = lr_at(batch.step, self.config.optim, self.total_steps)
        metrics = await anyio.to_thread.run_sync(self._update_sync, fresh, lr)
        metrics["stale_dropped"] = self.stale_dropped
        self.version += 1
        metrics["policy_version"] = self.version
        self.publish()
        return metrics

    def _update_sync(self, groups: list[Group], lr: float) -> dict[str, Any]:
        metrics: dict[str, Any] = {"lr": lr, "groups": len(groups)}
        if not groups:
            metrics.update(reward=math.nan, reward_std=math.nan, frac_reward_zero_std=math.nan)
            return metrics
        metrics.update(self._assign_advantages(groups))
        metrics.update(self._optimize(groups, lr))
        return metrics

    def _assign_advantages(self, groups: list[Group]) -> dict[str, Any]:
        """Set each rollout's group-relative advantage; the batch's reward metrics."""
        grpo = self.config.grpo
        metrics: dict[str, Any] = {}
        rewards = _rewards_matrix(groups)  # (B, G)
        valid = np.isfinite(rewards)
        metrics["reward"] = float(np.nanmean(rewards)) if valid.any() else math.nan
        metrics["rollouts"] = int(sum(len(g.rollouts) for g in groups))
        metrics["rollouts_failed"] = int(metrics["rollouts"] - valid.sum())
        if self.norm is not None and valid.any():
            self.norm.update(rewards[valid])
            rewards = np.where(valid, self.norm.normalize(rewards), np.nan)
        adv = group_advantages(
            rewards,
            scale=grpo.scale_rewards,
            leave_one_out=grpo.leave_one_out,
            drop_zero_std=grpo.drop_zero_std,
        )
        raw = _rewards_matrix(groups)
        rows = np.isfinite(raw).sum(axis=1) >= 2  # groups with two or more scored members
        metrics["reward_std"] = (  # ddof=1, as the advantages' group std
            float(np.mean(np.nanstd(raw[rows], axis=1, ddof=1))) if rows.any() else math.nan
        )
        metrics["frac_reward_zero_std"] = adv.frac_reward_zero_std
        metrics["groups_dropped_zero_std"] = int(adv.dropped.sum())
        for i, g in enumerate(groups):
            for j, r in enumerate(g.rollouts):
                r.advantage = float(adv.values[i, j])
        return metrics

    def _optimize(self, groups: list[Group], lr: float) -> dict[str, Any]:
        """``epochs`` passes over the mini-batches, one policy update each; mean metrics."""
        grpo = self.config.grpo
        chunks = _mini_batches(groups, grpo.mini_batch_size)
        sums: dict[str, float] = {}
        n_steps = 0
        for _epoch in range(grpo.epochs):
            for items, a in chunks:
                m = self.policy.update(items, a, grpo=grpo, lr=lr)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
        metrics: dict[str, Any] = {k: v / n_steps for k, v in sums.items()}
        metrics["optimizer_steps"] = n_steps
        return metrics

    # ----------------------------------------------------------------------- state

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and metadata to resume: policy, optimizer, pending snapshots, counters."""
        arrays: dict[str, np.ndarray] = {}
        p_arrays, p_meta = self.policy.state()
        arrays.update({f"policy/{k}": v for k, v in p_arrays.items()})
        o_arrays, o_meta = self.policy.optimizer_state()
        arrays.update({f"optim/{k}": v for k, v in o_arrays.items()})
        for v, snap in self._snapshots.items():
            if v != self.version:
                arrays.update({f"snapshot/{v}/{k}": np.asarray(a) for k, a in snap.params.items()})
        meta = {
            "version": self.version,
            "stale_dropped": self.stale_dropped,
            "policy": p_meta,
            "optim": o_meta,
            "snapshots": sorted(v for v in self._snapshots if v != self.version),
            "norm": self.norm.state() if self.norm is not None else None,
        }
        return arrays, meta

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output; the next update continues exactly where it stopped."""

        def sub(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        try:
            self.policy.load_state(sub("policy/"), meta["policy"])
            self.policy.load_optimizer_state(sub("optim/"), meta["optim"])
            self.version = int(meta["version"])
            self.stale_dropped = int(meta["stale_dropped"])
            snap_versions = [int(v) for v in meta["snapshots"]]
            norm_state = meta.get("norm")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"learner state is incomplete: {exc!r}") from None
        if self.norm is not None and norm_state:
            self.norm = RunningNorm.from_state(norm_state)
        self._snapshots = {}
        for v in snap_versions:
            params = sub(f"snapshot/{v}/")
            for a in params.values():
                a.setflags(write=False)
            self._snapshots[v] = PolicySnapshot(v, params)
        self.publish()
