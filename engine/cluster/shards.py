"""Rollout shards: async Ray actors, each running the group runner with its own client.

The driver keeps the sampler, the learner, checkpoints and telemetry; a :class:`ShardPool`
hands each group to one of ``cluster.shards`` actors (the one with the fewest groups in
flight) and returns the finished group, so the trainer's producer does not know where its
groups ran (:meth:`ShardPool.run_group` is a :data:`~engine.training.producer.RunGroup`).

**In a shard.** An actor builds its parts once, on its own event loop: the policy and
rewarder of the config (``make_parts``, default :func:`config_parts`), an
:class:`~engine.telemetry.events.EventLog` without a file, and for endpoint work a
:class:`~engine.cluster.limiter.LeasedLimiter` on the run's limiter actor, so that every
shard's requests count against one RPM/TPM limit. A group is run by
:class:`~engine.rollout.groups.GroupRunner` with the snapshot, example, group id and
generator the driver sent (the generator is a pure function of seed, step and group, so a
group gives the same samples wherever it runs). The prompt policy's snapshot holds logits
and candidate ids; the candidates themselves (instruction and demos, which growth adds in the
driver) travel with each group (``shard_state``) and join the shard's copy of the policy.

**Events, none lost.** A shard's request and phase events are collected as they are emitted
and travel back with the group they belong to (and any left at the end with
:meth:`ShardPool.aclose`); the driver re-emits them into its own ``events.jsonl`` (the one
writer), each tagged ``shard``. Events of a group whose shard died die with it: that group's
requests are sent again by its retry.

**A shard that dies** (its process killed, its node lost) fails the calls it had in flight
with ``RayActorError``; each such group is run again on another shard (Ray restarts the dead
one, ``max_restarts=-1``), up to ``cluster.shard_retries`` times, and counted in
:attr:`ShardPool.retried` (``cluster/groups_retried`` in metrics.jsonl). A group that runs out
of retries is dropped and counted like any dropped group.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config.sections import RunConfig
from ..endpoints.client import Client
from ..endpoints.limits import LimiterProtocol
from ..policies.base import Policy, PolicySnapshot
from ..rewards.rewarder import Rewarder
from ..rollout.groups import GroupRunner, RolloutCounters
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from ..training.assembly import build_components, build_rewarder
from ..types import Example, Group
from ._ray import ray_module
from .limiter import LeasedLimiter

__all__ = ("MakeParts", "ShardPool", "config_parts")

_log = get_logger("engine.cluster.shards")

MakeParts = Callable[[RunConfig, LimiterProtocol | None, EventLog], tuple[Policy, Rewarder, Any]]
"""Builds a shard's ``(policy, rewarder, closer)`` inside the shard: from the config, the
shard's limiter (None without a limiter actor) and its event log; ``closer`` is an object
with ``aclose()`` (its client) or None."""

_COUNTER_FIELDS = (
    "complete", "retried", "shrunk", "dropped",
    "rollouts_retried", "rollouts_failed", "cancelled_stragglers",
)  # fmt: skip


def config_parts(
    config: RunConfig, limiter: LimiterProtocol | None, events: EventLog
) -> tuple[Policy, Rewarder, Any]:
    """The default parts of a shard: the config's policy and rewarder, as the driver builds
    them; an endpoint policy gets a client of its own on ``limiter``."""
    client = None
    if config.policy != "tinylm":
        client = Client(config.endpoint, limits=limiter or config.limits, retry=config.retry,
                        events=events)  # fmt: skip
    policy, rewarder, _ = build_components(config, client=client)
    if rewarder is None:
        rewarder = build_rewarder(config, judge_client=client)
    return policy, rewarder, client


class _Shard:
    """One rollout shard (a Ray async actor; see the module docstring)."""

    def __init__(
        self,
        index: int,
        config: RunConfig,
        make_parts: MakeParts,
        limiter_actor: Any,
        remote_rewards: tuple[str, ...],
    ) -> None:
        self.index = index
        self.config = config
        self.make_parts = make_parts
        self.limiter_actor = limiter_actor
        self.remote_rewards = remote_rewards
        self.runner: GroupRunner | None = None
        self.policy: Policy | None = None
        self.closer: Any = None
        self.limiter: LeasedLimiter | None = None
        self.pending: list[dict[str, Any]] = []
        self.groups = 0

    def _collect(self, fields: Any) -> None:
        self.pending.append({**fields, "shard": self.index})

    def _build(self) -> GroupRunner:
        events = EventLog(None)
        events.subscribe(self._collect)
        c = self.config.cluster
        if self.limiter_actor is not None:
            self.limiter = LeasedLimiter(self.limiter_actor, self.config.limits,
                                         lease_requests=c.lease_requests,
                                         lease_ttl=c.lease_ttl)  # fmt: skip
        policy, rewarder, self.closer = self.make_parts(self.config, self.limiter, events)
        self.policy = policy
        if self.remote_rewards:
            from .rewards import RemoteRewards

            rewarder = RemoteRewards(c).apply(rewarder, self.remote_rewards)
        return GroupRunner.for_policy(policy, rewarder, self.config, events=events)

    async def run_group(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        group_id: str,
        rng: np.random.Generator,
        step: int,
        state: Any = None,
    ) -> tuple[Group | None, dict[str, int], list[dict[str, Any]]]:
        if self.runner is None:
            self.runner = self._build()
        if state is not None:  # the driver's policy state the snapshot refers to
            self.policy.adopt_shard_state(state)  # type: ignore[union-attr]
        counters = RolloutCounters()
        group = await self.runner.run(snapshot, example, group_id, rng, step, counters=counters)
        self.groups += 1
        counts = {f: getattr(counters, f) for f in _COUNTER_FIELDS}
        return group, counts, self.drain()

    def drain(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out

    async def close(self) -> list[dict[str, Any]]:
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.closer is not None:
            await self.closer.aclose()
        return self.drain()

    def pid(self) -> int:
        return os.getpid()


class ShardPool:
    """``cluster.shards`` rollout shards and the routing of groups to them.

    Use it as an async context manager (``aclose`` stops the shards and returns their last
    events to ``events``).

    Args:
        config: the run config; ``cluster`` is read.
        events: the driver's event log: shard events are re-emitted into it.
        limiter_actor: the run's limiter actor (None: shards use ``config.limits`` each).
        make_parts: builds a shard's policy and rewarder (default :func:`config_parts`).
        shard_state: what a shard needs besides the snapshot to generate with it, from the
            driver's policy (the prompt policy's ``shard_state``: the candidates the snapshot
            shows); None when the snapshot is the whole story (tinylm).

    Attributes:
        retried: groups run again because their shard died.
        retried_by_step: the same, by step (``cluster/groups_retried`` per step).
        lost: groups dropped after ``cluster.shard_retries`` retries.
        by_shard: groups finished by each shard index.
    """

    def __init__(
        self,
        config: RunConfig,
        events: EventLog,
        *,
        limiter_actor: Any = None,
        make_parts: MakeParts | None = None,
        shard_state: Callable[[PolicySnapshot], Any] | None = None,
    ) -> None:
        self._ray = ray_module()
        self._state = shard_state
        self.config = config
        self.events = events
        c = config.cluster
        actor = self._ray.remote(_Shard).options(
            num_cpus=c.shard_cpus, max_restarts=-1, max_task_retries=0, max_concurrency=10_000
        )
        parts = make_parts or config_parts
        self.shards = [
            actor.remote(i, config, parts, limiter_actor, c.remote_rewards) for i in range(c.shards)
        ]
        self._load = [0] * len(self.shards)
        self._errors = (self._ray.exceptions.RayActorError,
                        self._ray.exceptions.ActorUnavailableError)  # fmt: skip
        self.retried = 0
        self.retried_by_step: Counter[int] = Counter()
        self.lost = 0
        self.by_shard: Counter[int] = Counter()

    async def __aenter__(self) -> ShardPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _pick(self, avoid: int | None) -> int:
        order = sorted(range(len(self.shards)), key=lambda i: (i == avoid, self._load[i], i))
        return order[0]

    async def run_group(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        group_id: str,
        rng: np.random.Generator,
        step: int,
        counters: RolloutCounters | None = None,
    ) -> Group | None:
        """Run one group on a shard (another one if that shard dies); None when dropped."""
        counters = counters if counters is not None else RolloutCounters()
        avoid: int | None = None
        state = self._state(snapshot) if self._state is not None else None
        for attempt in range(self.config.cluster.shard_retries + 1):
            i = self._pick(avoid)
            self._load[i] += 1
            try:
                ref = self.shards[i].run_group.remote(snapshot, example, group_id, rng, step, state)
                group, counts, events = await ref
            except self._errors as exc:
                avoid = i
                _log.warning("shard.died", shard=i, group_id=group_id, attempt=attempt,
                             error=type(exc).__name__)  # fmt: skip
                if attempt < self.config.cluster.shard_retries:
                    self.retried += 1
                    self.retried_by_step[step] += 1
                continue
            finally:
                self._load[i] -= 1
            for f, v in counts.items():
                setattr(counters, f, getattr(counters, f) + v)
            self._replay(events)
            self.by_shard[i] += 1
            return group
        self.lost += 1
        counters.dropped += 1
        _log.warning("group.dropped", reason="shards died", group_id=group_id)
        return None

    def _replay(self, events: list[dict[str, Any]]) -> None:
        """Re-emit a shard's events into the driver's log (its one writer)."""
        for e in events:
            if e.get("kind") == "phase":
                e = dict(e)
                name = e.pop("phase")
                start, duration = e.pop("start"), e.pop("duration")
                for k in ("kind", "ts", "mono_start", "mono_end"):
                    e.pop(k, None)
                step = e.pop("step", None)
                self.events.record_phase(name, start=start, duration=duration, step=step, **e)
            else:
                self.events.emit(**e)

    async def aclose(self) -> None:
        """Close every shard (its client and leases) and take its last events; then stop the
        actors."""
        shards, self.shards = self.shards, []
        for shard in shards:
            try:
                self._replay(await asyncio.wait_for(_awaitable(shard.close.remote()), 30))
            except Exception as exc:  # dead or stuck: nothing left to take
                _log.warning("shard.close_failed", error=type(exc).__name__)
            self._ray.kill(shard, no_restart=True)


async def _awaitable(ref: Any) -> Any:
    return await ref
