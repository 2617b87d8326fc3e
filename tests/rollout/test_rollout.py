"""The rollout stage: groups admitted whole on a sim, partial groups, stragglers, overlap."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

from engine.config.loading import load_config
from engine.config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    PromptPolicyConfig,
    RetryConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
)
from engine.endpoints.client import Client
from engine.policies.base import PolicySnapshot
from engine.policies.prompt import PromptPolicy
from engine.rewards.rewarder import JudgeSpec, Rewarder, RewardSpec
from engine.rewards.verdicts import Verdict
from engine.rollout.groups import GroupRunner, RolloutCounters, derive_rng
from engine.testing.sim import Faults, SimConfig, SimServer
from engine.training.trainer import TrainingManager
from engine.types import Example, Rollout, Sample

SNAP = PolicySnapshot(0, {})
EX = Example("e0", "prompt")


def cfg_with(group_size: int = 4, use_n: bool = True, **rollout: Any) -> RunConfig:
    return RunConfig(
        grpo=GRPOConfig(group_size=group_size),
        endpoint=EndpointConfig(use_n=use_n),
        rollout=RolloutConfig(**rollout),
    )


def nonempty(example: Example, text: str) -> float:
    if text.startswith("bad-score"):
        raise ValueError("unscorable")
    return 1.0 if text else 0.0


def rewarder(fn: Callable[[Example, str], Any] = nonempty) -> Rewarder:
    return Rewarder([RewardSpec("r", fn, inline=True)])


class Scripted:
    """A policy (generation only) answering call k, sample i by ``script(k, i)``.

    ``script`` returns the text, or None for a failed sample. With ``gated``, every call waits
    until the test releases it (``release(k)``), so finishing order is the test's choice.
    """

    name = "scripted"
    embedded = False

    def __init__(
        self, script: Callable[[int, int], str | None] | None = None, *, gated: bool = False
    ) -> None:
        self.script = script or (lambda k, i: f"call{k}-{i}")
        self.gated = gated
        self.calls: list[int] = []  # n of each call
        self.started: list[int] = []  # call index, as calls start
        self.cancelled: list[int] = []  # call index of calls cancelled while waiting
        self.gates: dict[int, anyio.Event] = {}

    def release(self, k: int) -> None:
        self.gates[k].set()

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        k = len(self.calls)
        self.calls.append(n)
        self.started.append(k)
        if self.gated:
            self.gates[k] = anyio.Event()
            try:
                await self.gates[k].wait()
            except BaseException:
                self.cancelled.append(k)
                raise
        out = []
        for i in range(n):
            text = self.script(k, i)
            out.append(Sample(text="", error="scripted failure") if text is None else Sample(text))
        return out


async def wait_until(cond: Callable[[], bool]) -> None:
    with anyio.fail_after(2):
        while not cond():
            await anyio.lowlevel.checkpoint()


def rng() -> np.random.Generator:
    return np.random.default_rng([0, 1, 2])


def test_derive_rng_is_pure_and_distinct() -> None:
    """Derived generators depend only on the seed path, not on what was drawn before."""
    a, b = rng(), rng()
    a.random(5)
    x = derive_rng(a, 1, 0).random(3)
    np.testing.assert_array_equal(x, derive_rng(b, 1, 0).random(3))
    assert not np.array_equal(x, derive_rng(b, 1, 1).random(3))
    assert not np.array_equal(x, rng().random(3))


# ----------------------------------------------------------------------------- admission on a sim


class Recording(PromptPolicy):
    """The prompt policy, logging each generate call's start and end with its example id."""

    log: list[tuple[str, str]]

    async def generate(self, *a: Any, **k: Any) -> list[Sample]:
        self.log.append(("start", a[1].id))
        try:
            return await super().generate(*a, **k)
        finally:
            self.log.append(("end", a[1].id))


async def test_groups_start_whole_under_a_small_concurrency_cap() -> None:
    """With a cap of 12 < 2G and one request per member, each group's 8 members start together,
    never interleaved with another group's, and no more than 12 are ever generating."""
    async with SimServer(SimConfig(latency=0.003, latency_sigma=0.5, seed=1)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, mode="completions", use_n=False)
        cfg = dataclasses.replace(
            cfg_with(group_size=8, use_n=False), endpoint=endpoint, policy="prompt"
        )
        async with Client(endpoint, limits=LimitsConfig(max_concurrency=12)) as client:
            pol = Recording(client, PromptPolicyConfig(), instructions=["Answer.", "Reply."])
            pol.log = []
            runner = GroupRunner.for_policy(pol, rewarder(), cfg)
            assert runner.per_member and runner.gate.capacity() == 12
            stats = RolloutCounters()
            exs = [Example(f"e{j}", f"item {j}") for j in range(5)]
            async with anyio.create_task_group() as tg:
                for j, ex in enumerate(exs):
                    r = np.random.default_rng([0, 0, j])
                    go = functools.partial(runner.run, counters=stats)
                    tg.start_soon(go, pol.snapshot(0), ex, f"0-{j}", r, 0)
        starts = [eid for kind, eid in pol.log if kind == "start"]
        blocks = [set(starts[i : i + 8]) for i in range(0, len(starts), 8)]
        assert [len(b) for b in blocks] == [1] * 5  # whole groups, one after another
        in_flight = peak = 0
        for kind, _ in pol.log:
            in_flight += 1 if kind == "start" else -1
            peak = max(peak, in_flight)
        assert peak <= 12 and sim.counters.max_in_flight <= 12
        assert stats.complete == 5 and runner.gate.statistics().peak_units <= 12


# ----------------------------------------------------------------------------- partial groups


async def test_retry_re_requests_only_the_failed_members() -> None:
    """Failed members are re-requested once with a fresh generator; the group completes and
    every index appears exactly once."""
    pol = Scripted(lambda k, i: None if (k == 0 and i in (1, 3)) else f"c{k}-{i}")
    runner = GroupRunner(pol, rewarder(), cfg_with(partial_group="retry", member_retries=2))
    stats = RolloutCounters()
    group = await runner.run(SNAP, EX, "0-0", rng(), 0, counters=stats)
    assert group is not None and pol.calls == [4, 2]
    assert [r.index for r in group.rollouts] == [0, 1, 2, 3]
    assert [r.sample.text for r in group.rollouts] == ["c0-0", "c1-0", "c0-2", "c1-1"]
    assert all(r.ok for r in group.rollouts)
    assert stats.statistics().metrics() == {
        "groups/complete": 1,
        "groups/retried": 1,
        "groups/shrunk": 0,
        "groups/dropped": 0,
        "rollouts/retried": 2,
        "rollouts/failed": 2,
        "rollouts/cancelled_stragglers": 0,
    }


async def test_judges_see_each_members_index_in_its_group() -> None:
    """Re-generated members are judged under their own index in the group (what the judge's
    request events record as ``sample_index``)."""
    seen: dict[str, int] = {}

    class Recording:
        name = "rec"
        per_group = False

        async def verdicts(
            self,
            example: Example,
            texts: list[str],
            *,
            group_id: str | None = None,
            sample_indices: list[int] | None = None,
        ) -> list[Verdict]:
            assert sample_indices is not None
            seen.update(zip(texts, sample_indices, strict=True))
            return [Verdict(1.0, "", "") for _ in texts]

        def stats(self) -> Any:
            raise AssertionError("not called")

    pol = Scripted(lambda k, i: None if (k == 0 and i in (1, 3)) else f"c{k}-{i}")
    judged = Rewarder([RewardSpec("r", nonempty, inline=True)], judges=[JudgeSpec(Recording())])
    runner = GroupRunner(pol, judged, cfg_with(partial_group="retry", member_retries=2))
    group = await runner.run(SNAP, EX, "0-0", rng(), 0, counters=RolloutCounters())
    assert group is not None
    assert seen == {r.sample.text: r.index for r in group.rollouts}
    assert seen == {"c0-0": 0, "c1-0": 1, "c0-2": 2, "c1-1": 3}


async def test_retry_also_covers_failed_scoring_then_shrinks() -> None:
    """A member whose reward failed is re-generated; still failing after the retries, the group
    keeps its scored members (shrunk)."""
    pol = Scripted(lambda k, i: "bad-score" if (k == 0 and i == 0) or k >= 1 else f"ok{i}")
    runner = GroupRunner(pol, rewarder(), cfg_with(partial_group="retry", member_retries=2))
    stats = RolloutCounters()
    group = await runner.run(SNAP, EX, "0-0", rng(), 0, counters=stats)
    assert pol.calls == [4, 1, 1]
    assert group is not None and [r.index for r in group.rollouts] == [1, 2, 3]
    assert (stats.shrunk, stats.retried, stats.rollouts_retried, stats.rollouts_failed) == (
        1,
        1,
        2,
        3,
    )


@pytest.mark.parametrize(
    ("policy", "fail", "expect"),
    [
        ("shrink", {1}, "shrunk"),
        ("shrink", {0, 1, 2}, "dropped"),  # 1 scored < min_group_size 2
        ("drop", {1}, "dropped"),
        ("drop", set(), "complete"),
    ],
)
async def test_shrink_and_drop(policy: str, fail: set[int], expect: str) -> None:
    """shrink keeps the scored members if there are enough; drop drops any failed group."""
    pol = Scripted(lambda k, i: None if i in fail else f"t{i}")
    runner = GroupRunner(pol, rewarder(), cfg_with(partial_group=policy, min_group_size=2))
    stats = RolloutCounters()
    group = await runner.run(SNAP, EX, "0-0", rng(), 0, counters=stats)
    assert pol.calls == [4]  # never re-requested
    counts = {"complete": stats.complete, "shrunk": stats.shrunk, "dropped": stats.dropped}
    assert counts == {k: int(k == expect) for k in counts}
    assert stats.rollouts_failed == len(fail) and stats.rollouts_retried == 0
    if expect == "dropped":
        assert group is None
    else:
        assert group is not None
        assert [r.index for r in group.rollouts] == [i for i in range(4) if i not in fail]
        assert all(r.ok and r.policy_version == 0 for r in group.rollouts)


async def test_faulty_sim_every_group_is_counted_once(tmp_path: Any) -> None:
    """Against a sim failing 30% of requests (no client retries), every group of every step ends
    complete, shrunk or dropped exactly once; kept groups hold distinct, scored members."""
    async with SimServer(SimConfig(seed=3, faults=Faults(server_error=0.3))) as sim:
        cfg = RunConfig(
            policy="prompt",
            steps=3,
            endpoint=EndpointConfig(base_url=sim.base_url, mode="completions", max_tokens=4),
            prompt=PromptPolicyConfig(instructions=("Answer.", "Reply.")),
            grpo=GRPOConfig(group_size=4, mini_batch_size=2),
            data=DataConfig(batch_size=6, eval_fraction=0.0),
            trainer=TrainerConfig(eval_every=0, checkpoint_every=0),
            retry=RetryConfig(max_attempts=1),
            rollout=RolloutConfig(partial_group="retry", member_retries=1, min_group_size=3),
        )
        train = [Example(f"x{i}", f"item {i}") for i in range(40)]
        kept: list[list[Rollout]] = []
        async with Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry) as client:
            pol = PromptPolicy.from_config(cfg, client, examples=train)
            async with TrainingManager(
                cfg, policy=pol, rewarder=rewarder(), train=train, out=None
            ) as tm:
                orig = tm.learner.update

                async def spy(batch: Any) -> dict[str, Any]:
                    kept.extend(g.rollouts for g in batch.groups)
                    return await orig(batch)

                tm.learner.update = spy  # type: ignore[method-assign]
                await tm.run()
    assert (
        sim.counters.by_status[500] + sim.counters.by_status[502] + sim.counters.by_status[503] > 0
    )
    total = {"complete": 0, "shrunk": 0, "dropped": 0, "retried": 0}
    for m in tm.history:
        ends = m["groups/complete"] + m["groups/shrunk"] + m["groups/dropped"]
        assert ends == 6 and m["groups"] == m["groups/complete"] + m["groups/shrunk"]
        for k in total:
            total[k] += m[f"groups/{k}"]
    assert total["retried"] > 0 and total["complete"] > 0
    assert len(kept) == total["complete"] + total["shrunk"]
    for rs in kept:
        idx = [r.index for r in rs]
        assert len(set(idx)) == len(idx) and all(r.ok for r in rs) and len(rs) >= 3


# ----------------------------------------------------------------------------- stragglers


async def test_oversampling_keeps_the_first_g_and_cancels_the_rest() -> None:
    """G=4 + 2 spares: the first four to finish are kept in finishing order; the two still out
    are cancelled and counted."""
    pol = Scripted(lambda k, i: f"m{k}", gated=True)
    runner = GroupRunner(pol, rewarder(), cfg_with(oversample=2))
    assert runner.per_member
    stats = RolloutCounters()
    out: list[Any] = []

    async def go() -> None:
        out.append(await runner.run(SNAP, EX, "0-0", rng(), 0, counters=stats))

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await wait_until(lambda: len(pol.started) == 6)
        for k in (4, 0, 5, 2):
            pol.release(k)
            await anyio.lowlevel.checkpoint()
    group = out[0]
    assert group is not None and [r.sample.text for r in group.rollouts] == ["m4", "m0", "m5", "m2"]
    assert [r.index for r in group.rollouts] == [0, 1, 2, 3]
    assert sorted(pol.cancelled) == [1, 3]
    assert stats.cancelled_stragglers == 2 and stats.complete == 1
    assert pol.calls == [1] * 6


async def test_oversampling_on_a_sim_counts_k_stragglers_per_group() -> None:
    """With log-normal latencies, every group keeps G and counts exactly k stragglers."""
    async with SimServer(SimConfig(seed=2, latency=0.002, latency_sigma=1.0)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, mode="completions", max_tokens=4)
        cfg = dataclasses.replace(cfg_with(group_size=4, oversample=2), endpoint=endpoint)
        async with Client(endpoint, limits=LimitsConfig(max_concurrency=16)) as client:
            pol = PromptPolicy(client, PromptPolicyConfig(), instructions=["Answer."])
            runner = GroupRunner.for_policy(pol, rewarder(), cfg)
            stats = RolloutCounters()
            groups: list[Any] = []

            async def one(j: int) -> None:
                r = np.random.default_rng([0, 0, j])
                groups.append(await runner.run(pol.snapshot(0), EX, f"0-{j}", r, 0, counters=stats))

            async with anyio.create_task_group() as tg:
                for j in range(6):
                    tg.start_soon(one, j)
    assert stats.complete == 6 and stats.cancelled_stragglers == 12
    assert all(len(g.rollouts) == 4 for g in groups)
    assert sim.counters.requests == 6 * 6


# ----------------------------------------------------------------------------- overlap


async def test_scoring_starts_before_the_last_member_is_generated() -> None:
    """Per member, a rollout is scored as soon as it exists, while its group mates are still
    generating."""
    scored: list[str] = []
    first_scored = anyio.Event()

    async def reward(example: Example, text: str) -> float:
        scored.append(text)
        first_scored.set()
        return 1.0

    pol = Scripted(lambda k, i: f"m{k}", gated=True)
    runner = GroupRunner(pol, rewarder(reward), cfg_with(use_n=False))
    assert runner.per_member
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, SNAP, EX, "0-0", rng(), 0)
        await wait_until(lambda: len(pol.started) == 4)
        pol.release(2)
        with anyio.fail_after(2):
            await first_scored.wait()
        assert scored == ["m2"] and set(pol.gates) - {2} == {0, 1, 3}
        assert not any(pol.gates[k].is_set() for k in (0, 1, 3))
        for k in (0, 1, 3):
            pol.release(k)
    assert sorted(scored) == ["m0", "m1", "m2", "m3"]


class GroupJudgeStub:
    """A per-group judge stub: records each call's texts, scores by length."""

    name = "gj"
    per_group = True

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def verdicts(
        self, example: Example, texts: Sequence[str], *, group_id: str | None = None
    ) -> list[Any]:
        from engine.rewards.verdicts import Verdict

        self.calls.append(list(texts))
        return [Verdict(len(t) / 10, None, "") for t in texts]

    def stats(self) -> Mapping[str, Any]:
        return {}


async def test_group_judge_scores_the_group_once_after_retries() -> None:
    """With a per-group judge, failed generations are re-requested first and the judge sees the
    whole group in one call."""
    judge = GroupJudgeStub()
    rew = Rewarder(judges=[judge])  # type: ignore[list-item]
    pol = Scripted(lambda k, i: None if k == 2 else f"t{k}")  # one call per member
    runner = GroupRunner(pol, rew, cfg_with(use_n=False, member_retries=1))
    stats = RolloutCounters()
    group = await runner.run(SNAP, EX, "0-0", rng(), 0, counters=stats)
    assert group is not None and len(group.rollouts) == 4 and stats.complete == 1
    assert judge.calls == [["t0", "t1", "t3", "t4"]] and pol.calls == [1] * 5  # finishing order
    assert stats.rollouts_retried == 1


async def test_trainer_steps_carry_group_counters() -> None:
    """Step metrics of a run name the group outcomes (all complete for the embedded LM)."""
    cfg = load_config(
        None,
        [
            "steps=2",
            "data.batch_size=3",
            "grpo.group_size=2",
            "trainer.eval_every=0",
            "data.num_examples=40",
        ],
    )
    async with TrainingManager(cfg, out=None) as tm:
        await tm.run()
    for m in tm.history:
        assert m["groups/complete"] == 3 and m["groups/dropped"] == 0
        assert m["rollouts/cancelled_stragglers"] == 0
