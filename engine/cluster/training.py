"""A training run on a Ray cluster: :class:`ClusterTrainingManager`.

It is a :class:`~engine.training.trainer.TrainingManager` whose :meth:`run` first joins (or
starts) the cluster (:class:`~engine.cluster.connect.RayCluster`, versions checked), then
starts what ``[cluster]`` asks for, and takes it all down at the end:

* ``remote_rewards``: those reward functions run on reward workers
  (:mod:`engine.cluster.rewards`), in the shards' rewarders, or in the driver's when there
  are no shards;
* ``shards > 0``: the groups run on rollout shards (:mod:`engine.cluster.shards`), and for an
  endpoint policy one limiter actor holds the provider's limits for all of them
  (:mod:`engine.cluster.limiter`); the driver's own clients (evaluation, LLM judges) lease
  from the same actor.

Everything else stays in the driver: the sampler, the learner, checkpoints, metrics and
``events.jsonl`` (the shards' events are written by the driver), evaluation. The step's
``cluster/groups_retried`` counts groups run again because their shard died.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config.sections import RunConfig
from ..errors import ConfigError
from ..learning.learner import ScoredBatch
from ..policies.base import PolicySnapshot
from ..rollout.groups import RolloutCounters
from ..telemetry.logs import get_logger
from ..training.trainer import TRAINERS, RunSummary, TrainingManager
from ..types import Example, Group
from ._ray import ray_module
from .connect import RayCluster
from .limiter import driver_clients, limiter_actor, share_limit
from .rewards import RemoteRewards
from .shards import MakeParts, ShardPool

__all__ = ("ClusterTrainingManager",)

_log = get_logger("engine.cluster.training")

_SHARDABLE = ("tinylm", "prompt")  # policies whose shards the config alone can build


class ClusterTrainingManager(TrainingManager):
    """A :class:`~engine.training.trainer.TrainingManager` whose rollouts and CPU-heavy
    rewards run on a Ray cluster (module docstring).

    Args:
        config: the run config; ``cluster.backend`` must be ``"ray"``.
        make_parts: builds each shard's policy and rewarder
            (default :func:`~engine.cluster.shards.config_parts`).
        **kwargs: as :class:`~engine.training.trainer.TrainingManager`.

    Attributes:
        pool: the rollout shards while the run runs (None without shards).
        limiter_actor: the shared limiter's handle while the run runs, or None.
        remote: the remote-reward pool of the driver's rewarder, or None.
    """

    def __init__(
        self, config: RunConfig, *, make_parts: MakeParts | None = None, **kwargs: Any
    ) -> None:
        if config.cluster.backend != "ray":
            raise ValueError('ClusterTrainingManager needs cluster.backend = "ray"')
        ray_module()  # not installed: the one clear error, before any file is written
        if config.cluster.shards and make_parts is None and config.policy not in _SHARDABLE:
            raise ConfigError(
                f"rollout shards run the tinylm and prompt policies; policy {config.policy!r} "
                "generates in-process with torch weights the learner changes every step, and "
                "shipping them to shards each version would cost more than it saves: set "
                "cluster.shards = 0 (remote_rewards still run on the cluster), or pass "
                "make_parts=",
                key="cluster.shards",
            )
        super().__init__(config, **kwargs)
        self._make_parts = make_parts
        self.pool: ShardPool | None = None
        self.limiter_actor: Any = None
        self.remote: RemoteRewards | None = None

    async def run(
        self, *, resume: str | Path | None = None, force_resume: bool = False
    ) -> RunSummary:
        """Join the cluster, start the shards and the limiter, train, take them down."""
        c = self.config.cluster
        async with RayCluster(c):
            if c.remote_rewards and not c.shards:
                self.remote = RemoteRewards(c)
                self.rewarder = self.remote.apply(self.rewarder, c.remote_rewards)
            # the driver's own requests (evaluation, judges) count against the shards' limit
            clients = driver_clients(self.policy, self.rewarder)
            endpoint_shards = c.shards and (not self.policy.embedded or self._make_parts)
            if endpoint_shards or clients:
                self.limiter_actor = limiter_actor(self.config.limits)
            driver_limit = None
            if clients:
                driver_limit = share_limit(clients, self.limiter_actor, self.config.limits,
                                           lease_requests=c.lease_requests,
                                           lease_ttl=c.lease_ttl)  # fmt: skip
            if c.shards:
                state = getattr(self.policy, "shard_state", None)  # the prompt policy's
                self.pool = ShardPool(self.config, self.events, limiter_actor=self.limiter_actor,
                                      make_parts=self._make_parts, shard_state=state)  # fmt: skip
            try:
                return await super().run(resume=resume, force_resume=force_resume)
            finally:
                if self.pool is not None:
                    await self.pool.aclose()
                    self.events.flush()
                if driver_limit is not None:
                    await driver_limit.aclose()
                if self.limiter_actor is not None:
                    ray_module().kill(self.limiter_actor, no_restart=True)

    async def run_group(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        group_id: str,
        rng: np.random.Generator,
        step: int,
        counters: RolloutCounters | None = None,
    ) -> Group | None:
        """One group: on a shard when there are shards, else in the driver."""
        if self.pool is None:
            return await super().run_group(snapshot, example, group_id, rng, step, counters)
        return await self.pool.run_group(snapshot, example, group_id, rng, step, counters)

    def _step_metrics(self, batch: ScoredBatch, m: dict[str, Any]) -> None:
        super()._step_metrics(batch, m)
        if self.pool is not None:
            m["cluster/groups_retried"] = self.pool.retried_by_step.pop(batch.step, 0)


TRAINERS["ray"] = ClusterTrainingManager  # engine.finetune with [cluster] backend = "ray"
