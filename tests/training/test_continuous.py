"""Continuous admission (``rollout.admission = "continuous"``): the per-group staleness bound
under random latencies, consumption in completion order, stragglers, checkpoints and resume.

The policy is the embedded TinyLM behind a scripted latency per generation call, on a
virtual clock (:mod:`tests.virtual_time`): long tails cost no real time, and which groups
finish first is decided by the script, not by the machine's load. Worker-thread calls
(``anyio.to_thread.run_sync``: sampling, the update, the sampler's reads) run inline on the
loop here, so the clock moves only when every task waits on it (a thread still working
would let it jump past a straggler's deadline).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from engine.config.loading import load_config
from engine.config.sections import RunConfig
from engine.errors import CheckpointError, ConfigError
from engine.learning.learner import ScoredBatch
from engine.policies.base import PolicySnapshot
from engine.policies.tinylm import TinyLM
from engine.telemetry.records import read_records
from engine.training.producer import read_position
from engine.training.trainer import BatchMetrics, TrainingManager
from engine.types import Example, Sample
from tests.virtual_time import virtual_time

BASE = [
    "data.batch_size=4",
    "grpo.group_size=4",
    "grpo.mini_batch_size=2",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=0",
    "data.num_examples=400",
    "rollout.admission='continuous'",
]


def config(*extra: str) -> RunConfig:
    return load_config(None, [*BASE, *extra])


@pytest.fixture(autouse=True)
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker-thread calls run on the loop (see the module docstring)."""

    async def run_sync(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        return fn(*args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)


class Delayed(TinyLM):
    """TinyLM whose every generation call first sleeps ``delay(order, call)`` seconds of loop
    time: ``order`` is the rank of the call's example among the examples seen so far (0 for
    the first group to start), ``call`` the example's call count (members, re-requests)."""

    def __init__(self, cfg: RunConfig, delay: Callable[[int, int], float]) -> None:
        super().__init__(cfg.tinylm, seed=cfg.seed)
        self.delay = delay
        self.order: dict[str, int] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.finished: dict[str, float] = {}  # example id -> loop time its last call returned

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        rank = self.order.setdefault(example.id, len(self.order))
        call = self.calls[example.id]
        self.calls[example.id] += 1
        await anyio.sleep(self.delay(rank, call))
        out = await super().generate(snapshot, example, n, rng, greedy=greedy)
        self.finished[example.id] = anyio.current_time()
        return out


class Recorder:
    """Wraps the learner's update: per trained batch, the learner's version then, and each
    group's id, example id and generating version."""

    def __init__(self, tm: TrainingManager) -> None:
        self.batches: list[tuple[int, list[tuple[str, str, int]]]] = []
        update = tm.learner.update

        async def record(batch: ScoredBatch) -> dict[str, Any]:
            groups = [(g.group_id, g.example.id, g.policy_version) for g in batch.groups]
            self.batches.append((tm.learner.version, groups))
            return await update(batch)

        tm.learner.update = record  # type: ignore[method-assign]

    def lags(self) -> list[int]:
        return [v - pv for v, groups in self.batches for _, _, pv in groups]

    def group_ids(self) -> list[str]:
        return [gid for _, groups in self.batches for gid, _, _ in groups]


CUT = ("rollout.straggler_deadline=3.0",)
CAP = ("rollout.max_groups_in_flight=3",)


@pytest.mark.parametrize(
    ("staleness", "sigma", "extra"),
    [
        (0, 1.5, ()),
        (1, 1.0, ()),
        (2, 1.5, ()),
        (3, 2.0, ()),
        (1, 2.0, CUT),
        (2, 2.0, CUT),
        (3, 2.0, CUT + CAP),
        (1, 1.5, CAP),
    ],
)
def test_staleness_bound_holds_per_group_under_random_latencies(
    staleness: int, sigma: float, extra: tuple[str, ...]
) -> None:
    """No group is trained more than max_staleness versions after the one that generated it,
    under log-normal latencies, with stragglers cut (past straggler_deadline, or as soon as
    waiting for them idles the endpoint) and groups started as the gate frees up (a cap on
    groups in flight): every batch is full and no group is trained twice."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=10", f"grpo.max_staleness={staleness}", *extra)
        draws = np.random.default_rng(staleness).lognormal(0.0, sigma, size=10_000)
        policy = Delayed(cfg, lambda rank, call: float(draws[rank % len(draws)]))
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            summary = await tm.run()
        assert summary.steps_done == 10 and summary.extra["stale_dropped"] == 0
        if extra == CUT:  # stragglers were there to cut
            assert sum(m["groups/cut"] for m in tm.history) > 0
        assert [v for v, _ in rec.batches] == list(range(10))
        assert all(len(groups) == 4 for _, groups in rec.batches)
        lags = rec.lags()
        assert max(lags) <= staleness and min(lags) >= 0
        if staleness:  # groups really ran ahead of the learner
            assert max(lags) == staleness
        ids = rec.group_ids()
        assert len(ids) == len(set(ids))
        assert max(m["groups/max_lag"] for m in tm.history) == max(lags)

    run()


def test_learner_trains_groups_in_completion_order() -> None:
    """A slow first group does not hold back batch 0: the learner takes the four groups that
    finish first, later groups of the data included; the slow one goes into batch 1, the last
    its staleness allows (it is waited for there), and the others keep completion order."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=3", "grpo.max_staleness=1")
        policy = Delayed(cfg, lambda rank, call: 30.0 if rank == 0 else 1.0 + 0.1 * rank)
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            await tm.run()
        first, second = rec.batches[0][1], rec.batches[1][1]
        slow = next(eid for eid, rank in policy.order.items() if rank == 0)
        assert slow not in [eid for _, eid, _ in first]
        assert [gid for gid, _, _ in first] == ["0-1", "0-2", "0-3", "1-0"]
        assert slow in [eid for _, eid, _ in second]
        assert [pv for *_, pv in second if _[1] == slow] == [0]
        for _, groups in rec.batches:  # within a batch: completion order
            done = [policy.finished[eid] for _, eid, _ in groups]
            assert done == sorted(done)
        assert max(rec.lags()) == 1

    run()


def test_batch_admission_is_the_default_and_trains_in_sampler_order() -> None:
    """Without rollout.admission the slow first group holds batch 0, which is trained in
    sampler order: the deterministic mode."""

    @virtual_time
    async def run() -> None:
        cfg = load_config(None, [b for b in BASE if "admission" not in b] + ["steps=2"])
        assert cfg.rollout.admission == "batch"
        policy = Delayed(cfg, lambda rank, call: 30.0 if rank == 0 else 1.0)
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            await tm.run()
        assert rec.group_ids() == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1", "1-2", "1-3"]

    run()


def test_straggler_past_its_deadline_is_cut_and_dropped() -> None:
    """A whole-group straggler that holds back its last batch is cut at straggler_deadline:
    it has no member, so it is dropped, and the next group takes its place."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=3", "grpo.max_staleness=1", "rollout.straggler_deadline=5.0")
        policy = Delayed(cfg, lambda rank, call: 1e6 if rank == 0 else 1.0)
        t0 = anyio.current_time()
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            summary = await tm.run()
        assert anyio.current_time() - t0 < 100  # not the straggler's 1e6 s
        assert summary.steps_done == 3 and "0-0" not in rec.group_ids()
        assert sum(m["groups/cut"] for m in tm.history) == 1
        assert sum(m["groups/dropped"] for m in tm.history) == 1
        assert all(len(groups) == 4 for _, groups in rec.batches)
        assert max(rec.lags()) <= 1

    run()


def test_cut_straggler_keeps_its_scored_members_under_shrink() -> None:
    """Per-member generation (oversample): a straggler cut with two members scored is kept,
    shrunk to those two (partial_group = shrink, min_group_size 2)."""

    @virtual_time
    async def run() -> None:
        cfg = config(
            "steps=3",
            "grpo.max_staleness=1",
            "rollout.straggler_deadline=5.0",
            "rollout.oversample=1",
            "rollout.partial_group='shrink'",
        )
        policy = Delayed(cfg, lambda rank, call: 1e6 if rank == 0 and call >= 2 else 1.0)
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            await tm.run()
        assert "0-0" in rec.group_ids()
        assert sum(m["groups/cut"] for m in tm.history) == 1
        assert sum(m["groups/shrunk"] for m in tm.history) == 1
        assert sum(m["groups/dropped"] for m in tm.history) == 0

    run()


def test_without_a_deadline_a_straggler_is_waited_for() -> None:
    """straggler_deadline = 0: the slow group is trained, in the last batch its staleness
    allows, and nothing is cut."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=4", "grpo.max_staleness=2")
        policy = Delayed(cfg, lambda rank, call: 500.0 if rank == 0 else 1.0)
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec = Recorder(tm)
            await tm.run()
        where = [i for i, (_, groups) in enumerate(rec.batches) if "0-0" in [g for g, *_ in groups]]
        assert where == [2]  # generated at version 0, max_staleness 2
        assert sum(m["groups/cut"] for m in tm.history) == 0

    run()


def test_continuous_resume_trains_every_prompt_once(tmp_path: Path) -> None:
    """A continuous run stopped after 3 steps and resumed trains each data index once: the
    checkpoint holds the data position (the groups in flight at the stop start again)."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=6", "grpo.max_staleness=2", "trainer.checkpoint_every=1")
        draws = np.random.default_rng(7).lognormal(0.0, 1.5, size=1000)

        def stop_after_3(m: BatchMetrics) -> None:
            if m.batch_id == 2:
                a.request_stop()

        policy = Delayed(cfg, lambda rank, call: float(draws[rank]))
        async with TrainingManager(
            cfg, policy=policy, out=tmp_path, on_batch_complete=stop_after_3
        ) as a:
            rec_a = Recorder(a)
            first = await a.run()
        assert first.steps_done == 3
        policy = Delayed(cfg, lambda rank, call: float(draws[rank + 500]))
        async with TrainingManager(cfg, policy=policy, out=tmp_path) as b:
            rec_b = Recorder(b)
            summary = await b.run(resume=tmp_path)
        assert summary.steps_done == 6
        ids = rec_a.group_ids() + rec_b.group_ids()
        assert len(ids) == 24 and len(set(ids)) == 24  # none twice
        assert max(rec_b.lags()) <= 2 and [v for v, _ in rec_b.batches] == [3, 4, 5]
        steps = [r["step"] for r in read_records(tmp_path / "metrics.jsonl")]
        assert steps == list(range(6))
        indices = sorted(int(s) * 4 + int(j) for s, j in (i.split("-") for i in ids))
        assert indices[-1] - indices[0] + 1 >= 24 and math.isfinite(summary.reward_last)

    run()


def test_straggler_deadline_needs_continuous_admission() -> None:
    """straggler_deadline under batch admission is one clear error naming the key; an
    unknown admission mode too."""
    with pytest.raises(ConfigError, match=r"rollout\.straggler_deadline"):
        load_config(None, ["rollout.straggler_deadline=2.0"])
    with pytest.raises(ConfigError, match=r"rollout\.admission"):
        load_config(None, ["rollout.admission='eager'"])
    with pytest.raises(ConfigError, match=r"rollout\.straggler_deadline"):
        config("rollout.straggler_deadline=-1.0")


class Failing(Delayed):
    """Every generation call fails (an endpoint that is down)."""

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        await anyio.sleep(self.delay(0, 0))
        raise ConnectionError("endpoint down")


def test_every_group_failing_stops_the_run_for_failures() -> None:
    """When every group is dropped, a batch's worth of drops sends the batch empty, so the
    trainer's failure count stops the run (trainer.max_failed_steps) instead of admitting
    groups for ever."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=10", "grpo.max_staleness=1", "trainer.max_failed_steps=3")
        policy = Failing(cfg, lambda rank, call: 0.5)
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            summary = await tm.run()
        assert summary.stop_reason == "failures" and summary.steps_done == 3
        assert all(m["groups/dropped"] >= 4 and m["groups"] == 0 for m in tm.history)

    run()


def test_a_malformed_admission_position_is_one_checkpoint_error() -> None:
    """The data position a checkpoint holds is checked, not trusted."""
    assert read_position({"next": 8, "done": [10, 12]}, "ck") == (8, frozenset({10, 12}))
    for bad in (None, [], {"next": -1, "done": []}, {"next": 3, "done": [2]},
                {"next": True, "done": []}, {"next": 3, "done": "4"}):  # fmt: skip
        with pytest.raises(CheckpointError, match="ck: admission position"):
            read_position(bad, "ck")


class Live:
    """Wraps the manager's group function: how many groups are started (stamped with a
    version) and not finished, at most, and when each straggler's run ended."""

    def __init__(self, tm: TrainingManager) -> None:
        self.now = 0
        self.peak = 0
        run_group = tm.run_group

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                return await run_group(*args, **kwargs)
            finally:
                self.now -= 1

        tm.run_group = counted  # type: ignore[method-assign]


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_groups_start_as_the_endpoint_frees_up(sigma: float) -> None:
    """With two groups generating at once at most (rollout.max_groups_in_flight), a group
    starts, and takes its version, only once no other waits to be admitted: at most four
    are started and not finished (two generating, one waiting at the gate, one being
    scored), where the bound alone would start (max_staleness + 1) x B = 12 at once. The
    bound holds, every batch is full, and groups run fewer versions behind than the bound
    lets them."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=8", "grpo.max_staleness=2", "rollout.max_groups_in_flight=2")
        draws = np.random.default_rng(3).lognormal(0.0, sigma, size=10_000)
        policy = Delayed(cfg, lambda rank, call: float(draws[rank % len(draws)]))
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            rec, live = Recorder(tm), Live(tm)
            summary = await tm.run()
        assert summary.steps_done == 8 and all(len(g) == 4 for _, g in rec.batches)
        assert live.peak <= 4
        lags = rec.lags()
        assert min(lags) >= 0 and max(lags) <= 2
        assert sum(lags) / len(lags) < 1.0

    run()


def test_without_a_gate_cap_the_bound_alone_decides_admission() -> None:
    """The peer of the test above: no cap on groups in flight (an embedded policy has no
    limiter to wait for), so the bound's (max_staleness + 1) x B groups start at once."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=8", "grpo.max_staleness=2")
        draws = np.random.default_rng(3).lognormal(0.0, 1.5, size=10_000)
        policy = Delayed(cfg, lambda rank, call: float(draws[rank % len(draws)]))
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            live = Live(tm)
            await tm.run()
        assert live.peak == 12

    run()


class CutWatch(Delayed):
    """Delayed, recording when a generation call is cancelled (a cut straggler) and how many
    groups were then waiting at the run's admission gate."""

    def __init__(self, cfg: RunConfig, delay: Callable[[int, int], float]) -> None:
        super().__init__(cfg, delay)
        self.tm: TrainingManager | None = None
        self.cuts: list[tuple[float, int]] = []

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        try:
            return await super().generate(snapshot, example, n, rng, greedy=greedy)
        except anyio.get_cancelled_exc_class():
            assert self.tm is not None and self.tm._group_runner is not None
            waiting = self.tm._group_runner.gate.statistics().waiting
            self.cuts.append((anyio.current_time(), waiting))
            raise


@pytest.mark.parametrize("cap", [0, 2])
def test_straggler_is_cut_once_waiting_for_it_idles_the_endpoint(cap: int) -> None:
    """A straggler holds back the learner with the bound's places all taken: nothing may
    start, so waiting idles the endpoint and it is cut then, long before straggler_deadline
    (1,000 s), but not while other groups still wait to be admitted (cap: two groups
    generating at once). It is dropped, its place goes to the next group, the bound holds."""

    @virtual_time
    async def run() -> None:
        cfg = config("steps=4", "grpo.max_staleness=1", "rollout.straggler_deadline=1000.0",
                     f"rollout.max_groups_in_flight={cap}")  # fmt: skip
        policy = CutWatch(cfg, lambda rank, call: 1e6 if rank == 0 else 1.0)
        t0 = anyio.current_time()
        async with TrainingManager(cfg, policy=policy, out=None) as tm:
            policy.tm = tm
            rec = Recorder(tm)
            summary = await tm.run()
        assert summary.steps_done == 4 and all(len(g) == 4 for _, g in rec.batches)
        assert anyio.current_time() - t0 < 100 and "0-0" not in rec.group_ids()
        assert [w for _, w in policy.cuts] == [0]
        assert sum(m["groups/cut"] for m in tm.history) == 1
        assert sum(m["groups/dropped"] for m in tm.history) == 1
        assert max(rec.lags()) <= 1

    run()
