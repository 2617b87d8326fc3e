"""CPU-heavy reward functions as Ray tasks across the cluster, with bounded work in flight.

``[cluster] remote_rewards = ["my_module:run_tests"]`` names reward functions of ``[reward]``
that cost real CPU (code run against tests, verifiers). :class:`RemoteRewards` turns each
into an async function of the same name and weight whose call is one Ray task
(``cluster.reward_cpus`` CPUs), at most ``cluster.reward_workers`` of them in flight (the
rest wait their turn on the event loop, never blocking it). The function itself is put in
Ray's object store once and must be importable (or picklable by value) on every node.

Failures are recorded as today (:mod:`engine.rewards.rewarder`): a function that raises on a
worker raises the same exception in the driver (Ray's wrapper is unwrapped), so the rollout's
reward is NaN and its error names the function and the exception; a worker that dies
mid-call is that rollout's failure (``WorkerCrashedError``), not the run's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import anyio

from ..config.sections import ClusterConfig
from ..rewards.rewarder import Rewarder, RewardSpec
from ..types import Example
from ._ray import ray_module

__all__ = ("RemoteRewards",)


def _call(fn: Any, example: Example, text: str) -> Any:
    """Runs on a worker: the reward function itself."""
    return fn(example, text)


class RemoteRewards:
    """Runs chosen reward functions as Ray tasks, ``reward_workers`` in flight at most.

    Example::

        pool = RemoteRewards(config.cluster)
        rewarder = pool.apply(rewarder, ["run_tests"])   # run_tests now runs on the cluster

    Args:
        cluster: ``reward_workers`` and ``reward_cpus`` are read.

    Attributes:
        calls: remote calls finished (failed ones included).
        peak_in_flight: the most calls in flight at once.
    """

    def __init__(self, cluster: ClusterConfig) -> None:
        self._ray = ray_module()
        self._limit = cluster.reward_workers
        self._task = self._ray.remote(num_cpus=cluster.reward_cpus, max_retries=0)(_call)
        self._slots: anyio.Semaphore | None = None
        self._in_flight = 0
        self.calls = 0
        self.peak_in_flight = 0

    def wrap(self, spec: RewardSpec) -> RewardSpec:
        """``spec`` with its function run as a Ray task (same name and weight)."""
        fn_ref = self._ray.put(spec.fn)
        task = self._task
        ray_error = self._ray.exceptions.RayTaskError

        async def remote(example: Example, text: str) -> Any:
            if self._slots is None:
                self._slots = anyio.Semaphore(self._limit)
            async with self._slots:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                try:
                    return await task.remote(fn_ref, example, text)
                except ray_error as exc:  # the function raised there: raise it here
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                finally:
                    self._in_flight -= 1
                    self.calls += 1

        remote.__name__ = spec.name
        return RewardSpec(spec.name, remote, spec.weight)

    def apply(self, rewarder: Rewarder, names: Sequence[str]) -> Rewarder:
        """A copy of ``rewarder`` whose functions named in ``names`` run on the cluster.

        Raises:
            ValueError: a name that is not one of the rewarder's functions.
        """
        known = {s.name for s in rewarder.specs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"remote rewards {unknown} are not reward functions {sorted(known)}")
        out = copy.copy(rewarder)
        out.specs = tuple(self.wrap(s) if s.name in names else s for s in rewarder.specs)
        return out
