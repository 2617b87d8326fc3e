"""CPU-heavy reward functions (and the code sandbox) on reward-worker actors across the cluster.

``[cluster] remote_rewards = ["unit_tests", "my_module:run_tests"]`` names reward functions
of ``[reward]`` that cost real CPU (code run against tests in the sandbox, verifiers).
:class:`RemoteRewards` starts ``cluster.reward_workers`` reward-worker actors (each reserving
``cluster.reward_cpus`` CPUs) and turns each named function into an async function of the
same name and weight whose call runs on the least busy worker. Each worker runs one call at
a time and holds at most one more queued (:data:`DEPTH`), so the next rollout starts the
moment the last one ends, without a round trip through the driver; at most
``reward_workers * DEPTH`` calls are out at once, sent only to workers that have started
(one the cluster has no CPUs for holds nothing up) (the rest wait their turn on the event
loop, never blocking it). The functions are put in Ray's object store once and kept by each
worker after its first call; they must be importable (or picklable by value) on every node.
A coroutine function (the ``unit_tests`` reward, whose sandbox waits on a subprocess) runs
on the worker's own event loop.

Failures are recorded as today (:mod:`engine.rewards.rewarder`): a function that raises on a
worker raises the same exception in the driver (Ray's wrapper is unwrapped), so the rollout's
reward is NaN and its error names the function and the exception (``SandboxUnavailable``,
``SandboxError`` exactly as locally; code that loops or runs out of memory is a score, as
locally); a worker that dies mid-call is that rollout's failure (``RayActorError``), not the
run's, and Ray restarts the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import os
from collections.abc import Sequence
from typing import Any

import anyio

from ..config.sections import ClusterConfig
from ..rewards.rewarder import Rewarder, RewardSpec
from ..types import Example
from ._ray import ray_module

__all__ = ("DEPTH", "RemoteRewards")

DEPTH = 2
"""Calls out at once per reward worker: the one it runs and the next, already queued."""


class _RewardWorker:
    """One reward worker (a Ray actor): runs one call at a time, keeps the functions."""

    def __init__(self) -> None:
        self._fns: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, name: str, fn_ref: list[Any], example: Example, text: str) -> Any:
        fn = self._fns.get(name)
        if fn is None:  # the first call of this function here: fetch it once
            import ray

            fn = self._fns[name] = ray.get(fn_ref[0])
        out = fn(example, text)
        if inspect.isawaitable(out):  # one loop for the worker's life (the sandbox's slots)
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            out = self._loop.run_until_complete(out)
        return out


class RemoteRewards:
    """Runs chosen reward functions on ``reward_workers`` reward-worker actors.

    Example::

        pool = RemoteRewards(config.cluster)
        rewarder = pool.apply(rewarder, ["unit_tests"])   # unit_tests now runs on the cluster
        await pool.ready()                                 # optional: wait for the workers
        ...
        pool.close()

    Args:
        cluster: ``reward_workers`` and ``reward_cpus`` are read.

    Attributes:
        workers: the reward-worker actors' handles.
        calls: remote calls finished (failed ones included).
        peak_in_flight: the most calls out at once.
    """

    def __init__(self, cluster: ClusterConfig) -> None:
        self._ray = ray_module()
        actor = self._ray.remote(_RewardWorker).options(
            num_cpus=cluster.reward_cpus, max_restarts=-1, max_task_retries=0
        )
        self.workers = [actor.remote() for _ in range(cluster.reward_workers)]
        self._load = [0] * len(self.workers)
        self._started: list[int] = []  # the workers that have answered, in order
        self._first: asyncio.Event | None = None
        self._slots: anyio.Semaphore | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self.calls = 0
        self.peak_in_flight = 0

    async def ready(self) -> list[int]:
        """Wait until every worker has started; their process ids."""
        return list(await asyncio.gather(*(w.pid.remote() for w in self.workers)))

    def _watch_starts(self) -> None:
        """Note each worker as it starts: calls go only to started ones, so a worker that
        cannot be placed (the cluster's CPUs taken) holds no rollout up."""
        self._first = asyncio.Event()
        first = self._first

        async def started(i: int) -> None:
            with contextlib.suppress(Exception):  # never placed, or dead: left out
                await self.workers[i].pid.remote()
                self._started.append(i)
                first.set()

        for i in range(len(self.workers)):
            task = asyncio.get_running_loop().create_task(started(i))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    def close(self) -> None:
        """Stop the workers (calls still out fail)."""
        for w in self.workers:
            self._ray.kill(w, no_restart=True)

    def wrap(self, spec: RewardSpec) -> RewardSpec:
        """``spec`` with its function run on the reward workers (same name and weight)."""
        fn_ref = [self._ray.put(spec.fn)]  # in a list: the worker fetches it once, not per call
        ray_error = self._ray.exceptions.RayTaskError
        name = spec.name

        async def remote(example: Example, text: str) -> Any:
            if self._slots is None:
                self._slots = anyio.Semaphore(DEPTH * len(self.workers))
                self._watch_starts()
            assert self._first is not None
            await self._first.wait()
            async with self._slots:
                i = min(self._started, key=self._load.__getitem__)
                self._load[i] += 1
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                try:
                    return await self.workers[i].run.remote(name, fn_ref, example, text)
                except ray_error as exc:  # the function raised there: raise it here
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                finally:
                    self._load[i] -= 1
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
