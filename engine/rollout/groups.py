"""Fan out one group: generate G, score, stamp the policy version; admitted whole.

The trainer hands every group of a batch to one :class:`GroupRunner`::

    runner = GroupRunner.for_policy(policy, rewarder, config, events=events)
    counters = RolloutCounters()
    group = await runner.run(snapshot, example, "3-1", rng, step=3, counters=counters)
    counters.statistics().metrics()   # {"groups/complete": ..., "groups/dropped": ..., ...}

**Admission.** A group waits at the runner's :class:`~engine.rollout.admission.GroupGate`
until all of its generation requests may start (see :mod:`engine.rollout.admission`).

**How a group is generated.** Two shapes, chosen once per run from the config:

* *whole group* (default): one ``policy.generate(snapshot, example, G, rng)`` call with the
  batch's generator, exactly as a synchronous loop would, so runs stay reproducible and
  resumable bit for bit; the group's samples are scored together when the call returns;
* *per member*: ``G + oversample`` calls of ``policy.generate(..., n=1, rng_m)``, each with
  its own generator (below), each scored the moment it is generated. Used when
  ``rollout.oversample > 0`` (stragglers need members that finish independently) or when the
  endpoint config says ``use_n = false`` (then grouping saves no request, and per member the
  rewards start earlier). For the prompt policy this gives up the shared ``n`` request per
  candidate: each member draws its own candidate and sends its own request.

**Stragglers.** ``rollout.oversample = k`` requests ``G + k`` members and keeps the first
``G`` to be generated without error; the rest are cancelled (their HTTP requests are
aborted) and counted in ``rollouts/cancelled_stragglers``, including any that finished after
the group was full. Keeping the fastest ``G`` biases the group toward short, fast
completions: the counter makes that visible, and the rollout index is the finishing order.
Oversampling trades bit-for-bit reproducibility for latency (which members are kept depends
on timing). The per-request deadline of the client (``endpoint.deadline``) still applies.

**Partial groups** (``rollout.partial_group``). A member *fails* when its generation or its
scoring failed (reward NaN). ``retry`` re-requests the failed members, up to
``member_retries`` rounds, each round with fresh generators, then shrinks if still short;
``shrink`` keeps the scored members when there are at least ``min_group_size`` of them;
``drop`` drops any group with a failed member. A group below ``min_group_size`` is dropped.
Every group ends as exactly one of ``groups/complete`` (all G scored), ``groups/shrunk``
(fewer, failed members removed) or ``groups/dropped`` (``None`` is returned); groups that
needed re-requests are also counted in ``groups/retried`` and their re-requested members in
``rollouts/retried``. Each case is logged. With a per-group judge
(:class:`~engine.rewards.judges.GroupJudge`) the group is scored once, after generation and after
re-requests of failed *generations*; a failed group verdict is then handled by shrink/drop.

**Generators.** Attempt 0 of a whole group uses the batch's generator (a pure function of
``(seed, step, j)``, see :class:`~engine.data.jsonl.Batch`). Every other call uses a child of its
seed sequence, ``SeedSequence(entropy, spawn_key=(attempt, member))`` (see
:func:`derive_rng`): a pure function of ``(seed, step, j, attempt, member)``, independent of
the parent stream and of the order tasks run in.

**Episodes.** With ``[environment]`` set, every member is one multi-turn episode
(:class:`~engine.environments.runner.EpisodeRunner`) instead of one completion, scored by its
environment (:func:`~engine.environments.runner.episode_score`) instead of the rewarder;
the rest is unchanged (a failed episode is a failed member; every episode costs one admission
unit, as its turns are requests of their own; ``episodes/*`` counts how they ended).

**Overlap.** Each member's rewards start as soon as it is generated (per member) or as soon as
its group's call returns (whole group), while other groups keep generating; batch ``k + 1``
generates while batch ``k`` is scored and learned from, bounded by ``max_staleness`` (the
trainer's producer, :mod:`engine.training.trainer`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
import numpy as np
import structlog

from ..config.sections import RolloutConfig, RunConfig
from ..endpoints.client import Client
from ..environments.runner import EpisodeRunner, episode_metrics, episode_score, tally_episode
from ..policies.base import Policy, PolicySnapshot
from ..rewards.rewarder import Rewarder, Score
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from ..types import Example, Group, Rollout, Sample
from .admission import GroupGate, Ticket

__all__ = (
    "GroupCompletion",
    "GroupRunner",
    "RolloutCounters",
    "RolloutStatistics",
    "derive_rng",
)

_log = get_logger("engine.rollout.groups")

_ADMISSION_RECORDED = 1e-3
"""Seconds of waiting at the admission gate from which the wait is recorded as a phase."""
_NO_TRACK = contextlib.nullcontext()


def derive_rng(rng: np.random.Generator, *path: int) -> np.random.Generator:
    """A child generator of ``rng``'s seed sequence at ``spawn_key + path``.

    Pure: it reads the seed sequence, not the stream, so ``rng`` is left as it was and the
    child is the same whatever was drawn from ``rng`` before.

    Raises:
        ValueError: ``rng`` was not made from a :class:`numpy.random.SeedSequence`.
    """
    ss = getattr(rng.bit_generator, "seed_seq", None)
    if not isinstance(ss, np.random.SeedSequence):
        raise ValueError("derive_rng needs a generator made by np.random.default_rng(seed)")
    child = np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, *path))
    return np.random.default_rng(child)


# ----------------------------------------------------------------------------- counters


@dataclass(frozen=True, slots=True)
class RolloutStatistics:
    """A frozen snapshot of :class:`RolloutCounters`; :meth:`metrics` names the counters as
    in metrics.jsonl.

    Every group run is exactly one of complete, shrunk or dropped; ``retried`` counts groups
    that needed re-requests (whatever their end).
    """

    complete: int = 0
    """Groups with all G members scored."""
    retried: int = 0
    """Groups whose failed members were re-requested."""
    shrunk: int = 0
    """Groups kept with fewer than G members (failed ones removed)."""
    dropped: int = 0
    """Groups dropped (too few scored members, or any failure under ``drop``)."""
    rollouts_retried: int = 0
    """Members re-requested."""
    rollouts_failed: int = 0
    """Member generations or scorings that failed (each failure counted once)."""
    cancelled_stragglers: int = 0
    """Oversampled members not kept: cancelled in flight, or finished after the group was full."""
    episodes: Mapping[str, int] = field(default_factory=dict)
    """Episodes by how they ended, and their turns and calls
    (:func:`~engine.environments.runner.tally_episode`); empty without an environment."""

    def metrics(self) -> dict[str, int]:
        """``groups/complete``, ``groups/retried``, ``groups/shrunk``, ``groups/dropped``,
        ``rollouts/retried``, ``rollouts/failed``, ``rollouts/cancelled_stragglers``, and
        ``episodes/*`` when episodes ran."""
        return {
            "groups/complete": self.complete,
            "groups/retried": self.retried,
            "groups/shrunk": self.shrunk,
            "groups/dropped": self.dropped,
            "rollouts/retried": self.rollouts_retried,
            "rollouts/failed": self.rollouts_failed,
            "rollouts/cancelled_stragglers": self.cancelled_stragglers,
        } | episode_metrics(Counter(self.episodes))


@dataclass(slots=True)
class RolloutCounters:
    """The counters of the groups of one batch, as the runner updates them; the fields are
    those of :class:`RolloutStatistics`."""

    complete: int = 0
    retried: int = 0
    shrunk: int = 0
    dropped: int = 0
    rollouts_retried: int = 0
    rollouts_failed: int = 0
    cancelled_stragglers: int = 0
    episodes: Counter[str] = field(default_factory=Counter)

    def statistics(self) -> RolloutStatistics:
        """A frozen snapshot of the counters."""
        return RolloutStatistics(
            complete=self.complete,
            retried=self.retried,
            shrunk=self.shrunk,
            dropped=self.dropped,
            rollouts_retried=self.rollouts_retried,
            rollouts_failed=self.rollouts_failed,
            cancelled_stragglers=self.cancelled_stragglers,
            episodes=dict(self.episodes),
        )


# ----------------------------------------------------------------------------- partial groups


@dataclass(slots=True)
class _GroupRun:
    """The state of one group being fanned out.

    Attributes:
        rng: the batch's generator for this group.
        slots: the G members by index; None until generated.
    """

    snapshot: PolicySnapshot
    example: Example
    group_id: str
    rng: np.random.Generator
    slots: list[Rollout | None]
    counters: RolloutCounters


class GroupCompletion:
    """The ``rollout.partial_group`` policy: which members of a group to re-request, and how
    the group ends (complete, shrunk or dropped; see the module docstring).

    Args:
        rollout: ``partial_group``, ``member_retries`` and ``min_group_size`` are read.
        group_size: G.
        group_scoring: the group is scored whole (a per-group judge), so a failed scoring is
            not re-requested.
    """

    def __init__(self, rollout: RolloutConfig, group_size: int, *, group_scoring: bool) -> None:
        self.group_size = group_size
        self.partial: Literal["retry", "shrink", "drop"] = rollout.partial_group
        self.member_retries = rollout.member_retries if rollout.partial_group == "retry" else 0
        self.min_group_size = min(rollout.min_group_size, group_size)
        self.group_scoring = group_scoring

    def missing(self, g: _GroupRun) -> list[int]:
        """Members to re-request: failed generations, and failed scorings when scored singly."""
        out = []
        for i, r in enumerate(g.slots):
            if r is None or r.sample.error is not None or (not self.group_scoring and not r.ok):
                out.append(i)
        return out

    def finish(self, g: _GroupRun, step: int, attempts: int) -> Group | None:
        """The group as it ends, counted and logged; None when it is dropped."""
        G = self.group_size
        members = [r for r in g.slots if r is not None]
        ok = [r for r in members if r.ok]
        group = Group(g.group_id, step, g.example, g.snapshot.version)
        if len(ok) == G:
            g.counters.complete += 1
            group.rollouts = members
            return group
        failed = G - len(ok)
        errors = sorted({r.error or "no reward" for r in members if not r.ok})[:3]
        if self.partial == "drop" or len(ok) < self.min_group_size:
            g.counters.dropped += 1
            _log.warning(
                "group.dropped",
                policy=self.partial,
                scored=len(ok),
                failed=failed,
                min_group_size=self.min_group_size,
                retries=attempts,
                errors=errors,
            )
            return None
        g.counters.shrunk += 1
        _log.info("group.shrunk", scored=len(ok), failed=failed, retries=attempts, errors=errors)
        group.rollouts = ok
        return group


# ----------------------------------------------------------------------------- the runner


class GroupRunner:
    """Fans out one group at a time: admission, generation, scoring, stragglers; the
    :class:`GroupCompletion` decides re-requests and the group's end (module docstring).

    Args:
        policy: generates samples (``generate(snapshot, example, n, rng)``).
        rewarder: scores them (``score_group(example, texts, group_id=...)``).
        config: ``grpo.group_size``, ``rollout`` and ``endpoint.use_n`` are read.
        gate: the admission gate; None admits every group at once.
        events: where an embedded policy's generation calls are recorded as request events.
        n_honoured: whether the endpoint honours ``n`` now (a whole group then costs one
            unit); None: ``config.endpoint.use_n``.
        episodes: runs each member as an episode (``[environment]``); None: completions.
        queued: whether the endpoint's limiter has a backlog now (:meth:`saturated`); None:
            only the gate's queue is seen.

    Attributes:
        completion: the partial-group policy.
        embedded: the policy generates in-process (no endpoint, no client).
        per_member: one request per member: needed to cancel stragglers, and free when the
            endpoint does not use ``n`` anyway.
        group_scoring: a per-group judge needs every member: the group is scored once,
            after generation.
    """

    def __init__(
        self,
        policy: Policy,
        rewarder: Rewarder,
        config: RunConfig,
        *,
        gate: GroupGate | None = None,
        events: EventLog | None = None,
        n_honoured: Callable[[], bool] | None = None,
        episodes: EpisodeRunner | None = None,
        queued: Callable[[], bool] | None = None,
    ) -> None:
        rollout = config.rollout
        self._queued = queued
        self.policy = policy
        self.rewarder = rewarder
        self.group_size = config.grpo.group_size
        self.oversample = rollout.oversample
        self.embedded = policy.embedded
        self.per_member = rollout.oversample > 0 or (
            not self.embedded and not config.endpoint.use_n
        )
        self.gate = gate or GroupGate(None, max_groups=rollout.max_groups_in_flight)
        self.events = events
        use_n = config.endpoint.use_n
        self._n_honoured = n_honoured or (lambda: use_n)
        self.episodes = episodes
        if episodes is not None:
            episodes.check(policy)
            self._n_honoured = lambda: False  # an episode's turns are requests of its own
        self.group_scoring = any(j.judge.per_group for j in rewarder.judges)
        self.completion = GroupCompletion(
            rollout, self.group_size, group_scoring=self.group_scoring
        )

    @classmethod
    def for_policy(
        cls,
        policy: Policy,
        rewarder: Rewarder,
        config: RunConfig,
        *,
        events: EventLog | None = None,
    ) -> GroupRunner:
        """A runner whose gate is sized from the policy's client: its limiter's concurrency
        limit, and whether the endpoint was found to ignore ``n``."""
        client = None if policy.embedded else policy.client
        capacity: Callable[[], int] | None = None
        n_honoured: Callable[[], bool] = lambda: config.endpoint.use_n  # noqa: E731
        queued: Callable[[], bool] | None = None
        if isinstance(client, Client):
            capacity, n_honoured = _client_capacity(client), _client_honours_n(client, config)
            queued = _client_backlog(client)
        gate = GroupGate(capacity, max_groups=config.rollout.max_groups_in_flight)
        episodes = EpisodeRunner.from_config(config, events=events)
        return cls(policy, rewarder, config, gate=gate, events=events, n_honoured=n_honoured,
                   episodes=episodes, queued=queued)  # fmt: skip

    def saturated(self) -> bool:
        """Whether a group started now would only queue: a group waits at the gate, or the
        client's limiter has as many calls queued for a slot as its concurrency limit (a
        round of them: every slot stays busy while the next groups get going, and a call
        waits about one request's latency). Continuous admission starts groups while this
        is False (:mod:`engine.training.producer`)."""
        if self.gate.statistics().waiting:
            return True
        return self._queued is not None and self._queued()

    # ------------------------------------------------------------------ one group

    async def run(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        group_id: str,
        rng: np.random.Generator,
        step: int,
        *,
        counters: RolloutCounters | None = None,
        cut: anyio.Event | None = None,
    ) -> Group | None:
        """Generate, score and complete one group; None when it is dropped (counted, logged).

        Every rollout carries ``snapshot.version``. ``counters`` accumulates the counts.
        ``cut``: once set (a straggler past its deadline, continuous admission), the group's
        unfinished requests are cancelled and the partial-group policy ends it with the
        members scored so far (no re-request: there is no time left for one).
        """
        counters = counters if counters is not None else RolloutCounters()
        g = _GroupRun(snapshot, example, group_id, rng, [None] * self.group_size, counters)
        attempts = [0]
        with structlog.contextvars.bound_contextvars(group_id=group_id, step=step):
            if cut is None:
                await self._complete(g, attempts)
            else:
                async with anyio.create_task_group() as tg:

                    async def complete() -> None:
                        await self._complete(g, attempts)
                        tg.cancel_scope.cancel()

                    async def watch() -> None:
                        await cut.wait()
                        _log.info("group.cut", scored=sum(r is not None and r.ok
                                                          for r in g.slots))  # fmt: skip
                        tg.cancel_scope.cancel()

                    tg.start_soon(complete)
                    tg.start_soon(watch)
            return self.completion.finish(g, step, attempts[0])

    async def _complete(self, g: _GroupRun, attempts: list[int]) -> None:
        """Every round of one group: the first, re-requests, a per-group judge's scoring."""
        await self._round(g, list(range(self.group_size)), attempt=0)
        attempts[0] = await self._retry_missing(g)
        if self.group_scoring:
            await self._score_slots(g, list(range(self.group_size)))

    async def _retry_missing(self, g: _GroupRun) -> int:
        """Re-request failed members, up to ``member_retries`` rounds; the rounds run."""
        attempt = 0
        while attempt < self.completion.member_retries:
            missing = self.completion.missing(g)
            if not missing:
                break
            attempt += 1
            g.counters.rollouts_retried += len(missing)
            if attempt == 1:
                g.counters.retried += 1
            _log.info("group.retry", attempt=attempt, members=missing)
            await self._round(g, missing, attempt=attempt)
        return attempt

    # ------------------------------------------------------------------ rounds

    async def _round(self, g: _GroupRun, indices: list[int], *, attempt: int) -> None:
        """Generate (and, unless the group is scored whole, score) the members ``indices``."""
        if self.per_member:
            spare = self.oversample if attempt == 0 else 0
            await self._per_member(g, indices, attempt, spare)
        else:
            await self._whole(g, indices, attempt)

    async def _whole(self, g: _GroupRun, indices: list[int], attempt: int) -> None:
        """One ``generate`` call for all ``indices``; score them together when it returns."""
        n = len(indices)
        rng = g.rng if attempt == 0 else derive_rng(g.rng, attempt)
        cost = 1 if self._n_honoured() else n
        with await self._admit(g, cost, attempt):
            samples = await self._generate(g, n, rng)
        for i, s in zip(indices, samples, strict=True):
            g.slots[i] = Rollout(g.group_id, i, g.snapshot.version, s)
            if s.error is not None:
                g.counters.rollouts_failed += 1
        if not self.group_scoring:
            await self._score_slots(g, indices)

    async def _per_member(self, g: _GroupRun, indices: list[int], attempt: int, spare: int) -> None:
        """``len(indices) + spare`` one-sample calls; the first to succeed fill ``indices``
        (in finishing order) and are scored at once; the others are cancelled."""
        free = deque(indices)  # slots still to fill, in order
        failed: list[Sample] = []  # failed generations, to fill slots nobody else fills
        total = len(indices) + spare
        scopes: dict[int, anyio.CancelScope] = {}
        pending = total  # member generations not finished yet

        ticket = await self._admit(g, total, attempt)
        try:
            async with anyio.create_task_group() as tg:

                async def member(m: int) -> None:
                    nonlocal pending
                    with anyio.CancelScope() as scope:
                        scopes[m] = scope
                        rng = derive_rng(g.rng, attempt, m)
                        sample = (await self._generate(g, 1, rng))[0]
                    del scopes[m]
                    ticket.release(1)
                    pending -= 1
                    if pending == 0:
                        ticket.close()
                    if scope.cancelled_caught or not free:
                        g.counters.cancelled_stragglers += 1  # not kept: the group was full
                        return
                    if sample.error is not None:
                        g.counters.rollouts_failed += 1
                        failed.append(sample)
                        return
                    i = free.popleft()
                    g.slots[i] = Rollout(g.group_id, i, g.snapshot.version, sample)
                    if not free:  # full: cancel the stragglers
                        for s in list(scopes.values()):
                            s.cancel()
                    if not self.group_scoring:
                        tg.start_soon(self._score_slots, g, [i])

                for m in range(total):
                    tg.start_soon(member, m)
        finally:
            ticket.close()
        for sample in failed:  # slots that no success filled keep a failure, for the policy
            if not free:
                break
            i = free.popleft()
            g.slots[i] = Rollout(g.group_id, i, g.snapshot.version, sample)

    async def _admit(self, g: _GroupRun, cost: int, attempt: int) -> Ticket:
        """The gate's ticket for ``cost`` units; a wait is recorded as an ``admission`` phase
        of the group (:data:`engine.telemetry.events.PHASES`)."""
        wall, t0 = time.time(), time.perf_counter()
        ticket = await self.gate.acquire(cost, front=attempt > 0)
        waited = time.perf_counter() - t0
        if self.events is not None and waited >= _ADMISSION_RECORDED:
            self.events.record_phase("admission", start=wall, duration=waited,
                                     group_id=g.group_id, attempt=attempt)  # fmt: skip
        return ticket

    # ------------------------------------------------------------------ generation, scoring

    async def _generate(self, g: _GroupRun, n: int, rng: np.random.Generator) -> list[Sample]:
        """``n`` samples from the policy; a raising call gives ``n`` failed samples."""
        t0 = time.perf_counter()
        error: str | None = None
        episodes = self.episodes  # an episode runner records its own turns
        embedded_log = self.events if self.embedded and episodes is None else None
        track = _NO_TRACK if embedded_log is None else embedded_log.track("generation")
        try:
            with track:
                if episodes is not None:
                    samples = await episodes.generate(self.policy, g.snapshot, g.example, n, rng)
                else:
                    samples = list(await self.policy.generate(g.snapshot, g.example, n, rng))
        except Exception as exc:  # generation failed for the whole call: recorded, not lost
            error = f"{type(exc).__name__}: {exc}"
            samples = []
        if len(samples) < n:  # a policy that returned short: the missing ones failed
            why = error or f"the policy returned {len(samples)} of {n} samples"
            samples += [Sample(text="", error=why) for _ in range(n - len(samples))]
        del samples[n:]
        for s in samples:
            tally_episode(g.counters.episodes, s.episode)
        if embedded_log is not None:
            self._record_embedded(g, samples, n, error, time.perf_counter() - t0)
        return samples

    def _record_embedded(
        self, g: _GroupRun, samples: Sequence[Sample], n: int, error: str | None, latency: float
    ) -> None:
        """One request event for an embedded policy's generation call (an HTTP policy's
        client records its own)."""
        assert self.events is not None
        self.events.emit(
            kind="generation",
            endpoint="embedded",
            model=self.policy.name,
            group_id=g.group_id,
            policy_version=g.snapshot.version,
            status=200 if error is None else None,
            latency=latency,
            attempt=1,
            n=n,
            prompt_tokens=sum(s.usage.prompt_tokens for s in samples),
            completion_tokens=sum(s.usage.completion_tokens for s in samples),
            error_class=None if error is None else "embedded",
        )

    async def _score_slots(self, g: _GroupRun, indices: Sequence[int]) -> None:
        """Score the generated members ``indices`` in one ``score_group`` call."""
        slots = [(i, r) for i in indices if (r := g.slots[i]) is not None]
        if not slots:
            return
        rollouts = [r for _, r in slots]
        scores: list[Score]
        if self.episodes is not None:  # an episode is scored by its environment
            scores = [_episode_score(r.sample) for r in rollouts]
        else:
            texts = [r.sample.text if r.sample.error is None else None for r in rollouts]
            scores = await self.rewarder.score_group(
                g.example, texts, group_id=g.group_id, sample_indices=[i for i, _ in slots]
            )
        for r, score in zip(rollouts, scores, strict=True):
            r.reward = score.reward
            r.reward_parts = score.parts
            r.error = r.sample.error if r.sample.error is not None else score.error
            r.feedback = score.feedback
            if r.sample.error is None and not (r.error is None and math.isfinite(r.reward)):
                g.counters.rollouts_failed += 1


def _episode_score(sample: Sample) -> Score:
    """An episode's score; a member whose generation failed before its episode began has
    none (NaN, its error)."""
    if sample.episode is None:
        return Score(math.nan, {}, sample.error or "the episode did not run")
    return episode_score(sample)


def _client_capacity(client: Client) -> Callable[[], int]:
    """The gate's unit capacity: the client's concurrency limit now."""
    return lambda: int(client.limiter.statistics().concurrency_limit)


def _client_backlog(client: Client) -> Callable[[], bool]:
    """Whether as many calls wait for the client's limiter as its concurrency limit."""

    def backlog() -> bool:
        st = client.limiter.statistics()
        return st.waiting >= max(1, st.concurrency_limit)

    return backlog


def _client_honours_n(client: Client, config: RunConfig) -> Callable[[], bool]:
    """Whether a whole group is one request now: ``endpoint.use_n``, and the client has not
    found the endpoint to ignore ``n``."""
    use_n = config.endpoint.use_n

    def n_honoured() -> bool:
        return use_n and not client.statistics().ignores_n

    return n_honoured
