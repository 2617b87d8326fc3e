"""Rollout stage: fan out one group (generate G, score, stamp the policy version), admitted whole.

The trainer hands every group of a batch to one :class:`GroupRunner`::

    runner = GroupRunner.for_policy(policy, rewarder, cfg, events=events)
    stats = RolloutStats()
    group = await runner.run(snapshot, example, "3-1", rng, step=3, stats=stats)
    stats.metrics()   # {"groups/complete": ..., "groups/dropped": ..., ...}

**Admission** (:class:`GroupGate`). A group is admitted whole, first come first served: it
waits until the gate can take all of its generation requests at once, then starts them all.
The gate counts *generation request units* of admitted groups that have not finished yet, up
to a capacity read from the client's :class:`~engine.endpoints.limits.Limiter` (its concurrency limit,
re-read at every decision, so an adaptive limit is followed), and *groups* generating at
once, up to ``rollout.max_groups_in_flight`` (0: no cap). A group costs one unit per request
it will send: ``G`` (``G + oversample``) when members are requested one by one, or 1 when the
whole group is one ``n = G`` call and the endpoint honours ``n``. Units go back as each
request finishes, not when the whole group does, so the endpoint is refilled while a group's
straggler is still out. The gate never sends anything itself and never takes a limiter
permit: the client still takes one permit per HTTP attempt (concurrency, RPM, TPM, the 429
gate), so nothing is counted twice; the gate only decides *when a group may start*, so that
the limiter's FIFO queue holds whole groups in admission order instead of G-member fragments
of every group at once (which finishes every group late) and judge calls of admitted groups
are not stuck behind a mountain of later generation requests. Judge requests are not gated:
they finish work that was admitted already. Re-requests of failed members jump the queue.
An embedded policy (no client) has no unit capacity; only the group cap applies.

The prompt policy groups the rollouts of one ``generate`` call that drew the same candidate
into one request with ``n = k`` (:mod:`engine.policies.prompt`). With ``n = G`` in one call,
a group's cost is counted as 1 unit although it may send one request per distinct candidate
drawn: the gate then admits more groups than the concurrency limit, and the surplus waits in
the limiter's queue (which keeps the endpoint busy; ``max_groups_in_flight`` bounds it).

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

**Overlap.** Each member's rewards start as soon as it is generated (per member) or as soon as
its group's call returns (whole group), while other groups keep generating; batch ``k + 1``
generates while batch ``k`` is scored and learned from, bounded by ``max_staleness`` (the
trainer's producer, :mod:`engine.training.trainer`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np
import structlog

from ..config.schema import RunConfig
from ..policies.base import Policy, PolicySnapshot
from ..rewards.rewarder import Rewarder, Score
from ..telemetry.events import EventLog, get_logger
from ..types import Example, Group, Rollout, Sample

__all__ = (
    "GateStatistics",
    "GroupGate",
    "GroupRunner",
    "RolloutStats",
    "Ticket",
    "derive_rng",
)

_log = get_logger("engine.rollout.groups")


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


# ----------------------------------------------------------------------------- admission


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A frozen snapshot of a :class:`GroupGate`, from :meth:`GroupGate.statistics`."""

    capacity: int | None
    """Request units the gate admits at once now; None for no unit limit."""
    max_groups: int
    """Groups generating at once at most; 0 for no cap."""
    units: int
    """Request units held by admitted groups now."""
    groups: int
    """Admitted groups still generating now."""
    waiting: int
    """Groups waiting for admission now."""
    admitted: int
    """Admissions granted so far (re-request rounds included)."""
    peak_units: int
    """Most request units held at once."""
    peak_groups: int
    """Most groups generating at once."""


class _Waiter:
    """One admission waiting in the gate's queue."""

    __slots__ = ("cost", "event", "ticket")

    def __init__(self, cost: int) -> None:
        self.cost = cost  # request units wanted
        self.event = anyio.Event()  # set when granted
        self.ticket: Ticket | None = None  # the grant, once made


class Ticket:
    """An admitted group's hold on the gate: ``units`` request units and one group slot.

    Give units back with :meth:`release` as requests finish; :meth:`close` gives back the
    rest and the group slot. Use it as a context manager to close it on exit.
    """

    __slots__ = ("_gate", "_open", "units")

    units: int  #: Request units still held.

    def __init__(self, gate: GroupGate, units: int) -> None:
        self._gate = gate  # where the units go back
        self.units = units
        self._open = True  # holds a group slot

    def release(self, units: int = 1) -> None:
        """Give back ``units`` (at most what is held): requests of the group finished."""
        n = min(units, self.units)
        if n <= 0:
            return
        self.units -= n
        self._gate._units -= n
        self._gate._wake()

    def close(self) -> None:
        """Give back every unit and the group slot. Idempotent."""
        if not self._open:
            return
        self._open = False
        self._gate._units -= self.units
        self.units = 0
        self._gate._groups -= 1
        self._gate._wake()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupGate:
    """Admits whole groups, first come first served, against a request-unit capacity and a
    cap on groups in flight (see the module docstring).

    Example::

        gate = GroupGate(lambda: limiter.statistics().concurrency_limit, max_groups=8)
        with await gate.acquire(cost=G) as ticket:   # waits until all G may start
            ...                                      # start the G requests
            ticket.release(1)                        # as each one finishes

    A group costing more than the whole capacity is admitted alone once the gate is empty,
    so it is never stuck. Args:

    Args:
        capacity: request units at once: an int, a zero-argument callable read at every
            decision (e.g. the limiter's current concurrency limit), or None for no limit.
        max_groups: groups holding a ticket at once; 0 for no cap.
    """

    def __init__(
        self, capacity: int | Callable[[], int] | None = None, *, max_groups: int = 0
    ) -> None:
        if max_groups < 0:
            raise ValueError(f"max_groups must be >= 0, got {max_groups!r}")
        self._capacity = capacity  # int, callable or None
        self._max_groups = max_groups  # 0: no cap
        self._units = 0  # request units held by open tickets
        self._groups = 0  # open tickets
        self._waiters: deque[_Waiter] = deque()  # FIFO; re-requests go to the front
        self._admitted = 0  # grants so far
        self._peak_units = 0  # most units held at once
        self._peak_groups = 0  # most open tickets at once

    def capacity(self) -> int | None:
        """The unit capacity now (None: unlimited)."""
        cap = self._capacity() if callable(self._capacity) else self._capacity
        return None if cap is None or cap <= 0 else int(cap)

    def _fits(self, cost: int) -> bool:
        if self._groups == 0:
            return True  # an empty gate admits anything: no group is ever stuck
        if self._max_groups and self._groups >= self._max_groups:
            return False
        cap = self.capacity()
        return cap is None or self._units + cost <= cap

    def _grant(self, cost: int) -> Ticket:
        self._units += cost
        self._groups += 1
        self._admitted += 1
        self._peak_units = max(self._peak_units, self._units)
        self._peak_groups = max(self._peak_groups, self._groups)
        return Ticket(self, cost)

    def _wake(self) -> None:
        """Admit waiters from the head of the queue while they fit (strict FIFO)."""
        while self._waiters and self._fits(self._waiters[0].cost):
            w = self._waiters.popleft()
            w.ticket = self._grant(w.cost)
            w.event.set()

    async def acquire(self, cost: int, *, front: bool = False) -> Ticket:
        """Wait until a group of ``cost`` request units may start; its :class:`Ticket`.

        ``front``: a re-request round of an admitted group; it goes ahead of new groups.
        """
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost!r}")
        if (front or not self._waiters) and self._fits(cost):
            return self._grant(cost)
        w = _Waiter(cost)
        if front:
            self._waiters.appendleft(w)
        else:
            self._waiters.append(w)
        try:
            await w.event.wait()
        except BaseException:  # cancelled: give a grant back, or leave the queue
            if w.ticket is not None:
                w.ticket.close()
            else:
                self._waiters.remove(w)
                self._wake()
            raise
        assert w.ticket is not None
        return w.ticket

    def statistics(self) -> GateStatistics:
        """A frozen snapshot of the gate's state."""
        return GateStatistics(
            capacity=self.capacity(),
            max_groups=self._max_groups,
            units=self._units,
            groups=self._groups,
            waiting=len(self._waiters),
            admitted=self._admitted,
            peak_units=self._peak_units,
            peak_groups=self._peak_groups,
        )


# ----------------------------------------------------------------------------- counters


@dataclass(slots=True)
class RolloutStats:
    """Counters of the groups of one batch; :meth:`metrics` names them as in metrics.jsonl.

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

    def metrics(self) -> dict[str, int]:
        """``groups/complete``, ``groups/retried``, ``groups/shrunk``, ``groups/dropped``,
        ``rollouts/retried``, ``rollouts/failed``, ``rollouts/cancelled_stragglers``."""
        return {
            "groups/complete": self.complete,
            "groups/retried": self.retried,
            "groups/shrunk": self.shrunk,
            "groups/dropped": self.dropped,
            "rollouts/retried": self.rollouts_retried,
            "rollouts/failed": self.rollouts_failed,
            "rollouts/cancelled_stragglers": self.cancelled_stragglers,
        }


# ----------------------------------------------------------------------------- the runner


@dataclass(slots=True)
class _GroupRun:
    """The state of one group being fanned out."""

    snapshot: PolicySnapshot
    example: Example
    group_id: str
    rng: np.random.Generator  # the batch's generator for this group
    slots: list[Rollout | None]  # the G members by index; None until generated
    stats: RolloutStats


class GroupRunner:
    """Fans out one group at a time: admission, generation, scoring, partial groups,
    stragglers (see the module docstring).

    Args:
        policy: generates samples (``generate(snapshot, example, n, rng)``).
        rewarder: scores them (``score_group(example, texts, group_id=...)``).
        cfg: ``grpo.group_size``, ``rollout`` and ``endpoint.use_n`` are read.
        gate: the admission gate; None admits every group at once.
        events: where an embedded policy's generation calls are recorded as request events.
        n_honoured: whether the endpoint honours ``n`` now (a whole group then costs one
            unit); None: ``cfg.endpoint.use_n``.
    """

    def __init__(
        self,
        policy: Policy,
        rewarder: Rewarder,
        cfg: RunConfig,
        *,
        gate: GroupGate | None = None,
        events: EventLog | None = None,
        n_honoured: Callable[[], bool] | None = None,
    ) -> None:
        r = cfg.rollout
        self.policy = policy  # generation
        self.rewarder = rewarder  # scoring
        self.group_size = cfg.grpo.group_size  # G
        self.partial: Literal["retry", "shrink", "drop"] = r.partial_group
        self.member_retries = r.member_retries if r.partial_group == "retry" else 0
        self.min_group_size = min(r.min_group_size, cfg.grpo.group_size)
        self.oversample = r.oversample  # k extra members per group
        self.embedded = policy.embedded  # no endpoint, no client
        # one request per member: needed to cancel stragglers; free when n is not used anyway
        self.per_member = r.oversample > 0 or (not self.embedded and not cfg.endpoint.use_n)
        self.gate = gate or GroupGate(None, max_groups=r.max_groups_in_flight)
        self.events = events  # embedded generation events
        use_n = cfg.endpoint.use_n
        self._n_honoured = n_honoured or (lambda: use_n)
        judges = getattr(rewarder, "judges", ())
        # a per-group judge needs every member: score the group once, after generation
        self.group_scoring = any(getattr(j.judge, "per_group", False) for j in judges)

    @classmethod
    def for_policy(
        cls, policy: Policy, rewarder: Rewarder, cfg: RunConfig, *, events: EventLog | None = None
    ) -> GroupRunner:
        """A runner whose gate is sized from the policy's client: its limiter's concurrency
        limit, and whether the endpoint was found to ignore ``n``."""
        client = None if policy.embedded else policy.client
        limiter = getattr(client, "limiter", None)
        capacity: Callable[[], int] | None = None
        if limiter is not None and hasattr(limiter, "statistics"):
            capacity = lambda: int(limiter.statistics().concurrency_limit)  # noqa: E731
        use_n = cfg.endpoint.use_n

        def n_honoured() -> bool:
            if not use_n:
                return False
            stats = getattr(client, "statistics", None)
            return stats is None or not stats().ignores_n

        gate = GroupGate(capacity, max_groups=cfg.rollout.max_groups_in_flight)
        return cls(policy, rewarder, cfg, gate=gate, events=events, n_honoured=n_honoured)

    # ------------------------------------------------------------------ one group

    async def run(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        group_id: str,
        rng: np.random.Generator,
        step: int,
        *,
        stats: RolloutStats | None = None,
    ) -> Group | None:
        """Generate, score and complete one group; None when it is dropped (counted, logged).

        Every rollout carries ``snapshot.version``. ``stats`` accumulates the counters.
        """
        stats = stats if stats is not None else RolloutStats()
        g = _GroupRun(snapshot, example, group_id, rng, [None] * self.group_size, stats)
        with structlog.contextvars.bound_contextvars(group_id=group_id, step=step):
            await self._round(g, list(range(self.group_size)), attempt=0)
            attempt = 0
            while attempt < self.member_retries:
                missing = self._missing(g)
                if not missing:
                    break
                attempt += 1
                stats.rollouts_retried += len(missing)
                if attempt == 1:
                    stats.retried += 1
                _log.info("group.retry", attempt=attempt, members=missing)
                await self._round(g, missing, attempt=attempt)
            if self.group_scoring:
                await self._score_slots(g, list(range(self.group_size)))
            return self._finish(g, step, attempt)

    def _missing(self, g: _GroupRun) -> list[int]:
        """Members to re-request: failed generations, and failed scorings when scored singly."""
        out = []
        for i, r in enumerate(g.slots):
            if r is None or r.sample.error is not None or (not self.group_scoring and not r.ok):
                out.append(i)
        return out

    def _finish(self, g: _GroupRun, step: int, attempts: int) -> Group | None:
        G = self.group_size
        members = [r for r in g.slots if r is not None]
        ok = [r for r in members if r.ok]
        group = Group(g.group_id, step, g.example, g.snapshot.version)
        if len(ok) == G:
            g.stats.complete += 1
            group.rollouts = members
            return group
        failed = G - len(ok)
        errors = sorted({r.error or "no reward" for r in members if not r.ok})[:3]
        if self.partial == "drop" or len(ok) < self.min_group_size:
            g.stats.dropped += 1
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
        g.stats.shrunk += 1
        _log.info("group.shrunk", scored=len(ok), failed=failed, retries=attempts, errors=errors)
        group.rollouts = ok
        return group

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
        with await self.gate.acquire(cost, front=attempt > 0):
            samples = await self._generate(g, n, rng)
        for i, s in zip(indices, samples, strict=True):
            g.slots[i] = Rollout(g.group_id, i, g.snapshot.version, s)
            if s.error is not None:
                g.stats.rollouts_failed += 1
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

        ticket = await self.gate.acquire(total, front=attempt > 0)
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
                        g.stats.cancelled_stragglers += 1  # not kept: the group was full
                        return
                    if sample.error is not None:
                        g.stats.rollouts_failed += 1
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

    # ------------------------------------------------------------------ generation, scoring

    async def _generate(self, g: _GroupRun, n: int, rng: np.random.Generator) -> list[Sample]:
        """``n`` samples from the policy; a raising call gives ``n`` failed samples."""
        t0 = time.perf_counter()
        error: str | None = None
        try:
            samples = list(await self.policy.generate(g.snapshot, g.example, n, rng))
        except Exception as exc:  # generation failed for the whole call: recorded, not lost
            error = f"{type(exc).__name__}: {exc}"
            samples = []
        if len(samples) < n:  # a policy that returned short: the missing ones failed
            why = error or f"the policy returned {len(samples)} of {n} samples"
            samples += [Sample(text="", error=why) for _ in range(n - len(samples))]
        del samples[n:]
        if self.embedded and self.events is not None:
            self.events.emit(
                kind="generation",
                endpoint="embedded",
                model=self.policy.name,
                group_id=g.group_id,
                policy_version=g.snapshot.version,
                status=200 if error is None else None,
                latency=time.perf_counter() - t0,
                attempt=1,
                n=n,
                prompt_tokens=sum(s.usage.prompt_tokens for s in samples),
                completion_tokens=sum(s.usage.completion_tokens for s in samples),
                error_class=None if error is None else "embedded",
            )
        return samples

    async def _score_slots(self, g: _GroupRun, indices: Sequence[int]) -> None:
        """Score the generated members ``indices`` in one ``score_group`` call."""
        slots = [(i, r) for i in indices if (r := g.slots[i]) is not None]
        if not slots:
            return
        rollouts = [r for _, r in slots]
        texts = [r.sample.text if r.sample.error is None else None for r in rollouts]
        scores: list[Score] = await self.rewarder.score_group(
            g.example, texts, group_id=g.group_id, sample_indices=[i for i, _ in slots]
        )
        for r, score in zip(rollouts, scores, strict=True):
            r.reward = score.reward
            r.reward_parts = score.parts
            r.error = r.sample.error if r.sample.error is not None else score.error
            r.feedback = score.feedback
            if r.sample.error is None and not (r.error is None and math.isfinite(r.reward)):
                g.stats.rollouts_failed += 1
