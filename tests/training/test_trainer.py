"""The training manager: pipeline overlap, callbacks, eval, early stop, checkpoints, resume."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config.loading import load_config
from engine.config.sections import GRPOConfig, RunConfig
from engine.errors import CheckpointError
from engine.learning.learner import ScoredBatch
from engine.policies.base import PolicySnapshot
from engine.policies.tinylm import TinyLM
from engine.telemetry.records import read_records
from engine.training.trainer import BatchMetrics, TrainingManager
from engine.types import Example, Rollout, Sample

SMALL = [
    "steps=6",
    "data.batch_size=4",
    "grpo.group_size=4",
    "grpo.mini_batch_size=2",
    "trainer.eval_every=2",
    "trainer.eval_size=8",
    "trainer.checkpoint_every=2",
    "data.num_examples=200",
]


def small(*extra: str) -> RunConfig:
    return load_config(None, [*SMALL, *extra])


async def test_run_writes_outputs_and_calls_back(tmp_path: Path) -> None:
    """A run writes one metrics line per step, checkpoints, a summary; callbacks see metrics."""
    seen: list[BatchMetrics] = []
    evals: list[int] = []
    async with TrainingManager(
        small(), out=tmp_path, on_batch_complete=seen.append, on_eval=lambda s, m: evals.append(s)
    ) as tm:
        summary = await tm.run()
    assert [m.batch_id for m in seen] == list(range(6))
    assert all(m.value_loss is None for m in seen)  # GRPO has no value function
    assert all(math.isfinite(m.avg_reward) and math.isfinite(m.policy_loss) for m in seen)
    assert evals == [1, 3, 5]
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(6))
    for key in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "policy_loss",
        "kl",
        "entropy",
        "clip_ratio",
        "lr",
        "step_time",
        "tokens/prompt",
        "tokens/completion",
        "requests/errors",
        "requests/cancelled",
        "latency/p50",
        "latency/p95",
    ):
        assert key in rows[0], key
    assert rows[0]["tokens/completion"] > 0  # embedded generation is accounted as requests
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-2",
        "step-4",
        "step-6",
    ]
    assert summary.steps_done == 6 and summary.stop_reason == "steps"
    assert (tmp_path / "summary.json").exists()
    events = list(read_records(tmp_path / "events.jsonl"))
    assert sum(1 for e in events if e["kind"] != "phase") == 6 * 4  # one request per group
    phases = {(e["phase"], e["step"]) for e in events if e["kind"] == "phase"}
    for name, steps in (
        ("rollouts", range(6)),
        ("step", range(6)),
        ("update", range(6)),
        ("after_update", range(6)),
        ("eval", (1, 3, 5)),
        ("checkpoint", (1, 3, 5)),
    ):
        assert {s for p, s in phases if p == name} == set(steps), name


async def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Stopping after 3 steps and resuming gives the same parameters as an uninterrupted run."""
    cfg = small(
        "grpo.epochs=2", "grpo.beta=0.02", "optim.schedule='cosine'", "optim.warmup_steps=1"
    )
    async with TrainingManager(cfg, out=tmp_path / "a") as a:
        await a.run()
        straight = {k: v.copy() for k, v in a.policy.parameters().items()}

    def stop_after_3(m: BatchMetrics) -> None:
        if m.batch_id == 2:
            b.request_stop()

    async with TrainingManager(cfg, out=tmp_path / "b", on_batch_complete=stop_after_3) as b:
        first = await b.run()
    assert first.stop_reason == "interrupted" and first.steps_done == 3
    async with TrainingManager(cfg, out=tmp_path / "b") as c:
        await c.run(resume=tmp_path / "b")
        resumed = c.policy.parameters()
    assert set(resumed) == set(straight)
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    steps = [r["step"] for r in read_records(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(6))  # no duplicate or missing steps
    ra = [r["reward"] for r in read_records(tmp_path / "a" / "metrics.jsonl")]
    rb = [r["reward"] for r in read_records(tmp_path / "b" / "metrics.jsonl")]
    assert ra == rb


async def test_resume_refuses_incompatible_config(tmp_path: Path) -> None:
    """Resuming with a different model shape names the key that differs."""
    async with TrainingManager(small("steps=2"), out=tmp_path) as a:
        await a.run()
    async with TrainingManager(small("steps=4", "tinylm.hidden=7"), out=tmp_path) as b:
        with pytest.raises(CheckpointError, match="tinylm"):
            await b.run(resume=tmp_path)


async def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    """--resume on a directory without checkpoints is a clear CheckpointError."""
    async with TrainingManager(small(), out=tmp_path / "x") as tm:
        with pytest.raises(CheckpointError, match="no checkpoint"):
            await tm.run(resume=tmp_path / "empty")


async def test_early_stopping(tmp_path: Path) -> None:
    """With patience 1 and an impossible min delta, the run stops at the second evaluation."""
    cfg = small("steps=20", "trainer.early_stop_patience=1", "trainer.early_stop_min_delta=5.0")
    async with TrainingManager(cfg, out=None) as tm:
        summary = await tm.run()
    assert summary.stop_reason == "early_stop"
    assert summary.steps_done == 4  # evals after steps 2 and 4; the first sets the best


class Instrumented(TinyLM):
    """TinyLM that records the order of generation and update calls."""

    def __init__(self, *a: Any, batch_size: int = 4, **k: Any) -> None:
        super().__init__(*a, **k)
        self.log: list[tuple[str, int]] = []
        self.batch_size = batch_size
        self.gens = 0  # generate calls so far (one per group)
        self.published = 0  # latest version the learner published = index of the batch in update
        self.cond = threading.Condition()
        self.wait_for_next_gen = False

    def snapshot(self, version: int) -> PolicySnapshot:
        self.published = version
        return super().snapshot(version)

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        self.log.append(("gen", snapshot.version))
        with self.cond:
            self.gens += 1
            self.cond.notify_all()
        return await super().generate(snapshot, example, n, rng, greedy=greedy)

    def update(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, *, grpo: GRPOConfig, lr: float
    ) -> dict[str, float]:
        self.log.append(("update", rollouts[0].policy_version))
        if self.wait_for_next_gen:
            k = self.published  # the batch being learned from
            with self.cond:
                ok = self.cond.wait_for(lambda: self.gens > (k + 1) * self.batch_size, timeout=10)
            if not ok:
                raise AssertionError("generation of the next batch did not overlap the update")
        return super().update(rollouts, advantages, grpo=grpo, lr=lr)


async def test_generation_overlaps_update(tmp_path: Path) -> None:
    """With max_staleness 1, batch k+1 is generated while batch k is being learned from."""
    cfg = small("steps=5", "grpo.max_staleness=1", "grpo.mini_batch_size=4", "trainer.eval_every=0")
    pol = Instrumented(cfg.tinylm, seed=0)
    pol.wait_for_next_gen = True
    async with TrainingManager(cfg, policy=pol, out=None) as tm:
        # the last update has no next batch to wait for
        orig = tm._after_step

        async def after(batch: ScoredBatch, m: dict[str, Any]) -> None:
            if batch.step == 2:
                pol.wait_for_next_gen = False
            await orig(batch, m)

        tm._after_step = after  # type: ignore[method-assign]
        summary = await tm.run()
    assert summary.steps_done == 5


async def test_staleness_zero_is_synchronous(tmp_path: Path) -> None:
    """With max_staleness 0, no generation starts until the previous update is done."""
    cfg = small("steps=4", "grpo.max_staleness=0", "grpo.mini_batch_size=4", "trainer.eval_every=0")
    pol = Instrumented(cfg.tinylm, seed=0)
    async with TrainingManager(cfg, policy=pol, out=None) as tm:
        await tm.run()
    kinds = [k for k, _ in pol.log]
    # gen x4 (one per group), update, gen x4, update ... strictly alternating blocks
    blocks = [kinds[i : i + 5] for i in range(0, len(kinds), 5)]
    assert all(b == ["gen"] * 4 + ["update"] for b in blocks)


async def test_request_metrics_are_per_step(tmp_path: Path) -> None:
    """Each step's request metrics count that batch's requests, even though batches overlap."""
    cfg = small("trainer.eval_every=0")
    async with TrainingManager(cfg, out=tmp_path) as tm:
        await tm.run()
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    assert [r["requests/total"] for r in rows] == [cfg.data.batch_size] * cfg.steps


class Lagging(TinyLM):
    """TinyLM whose snapshots say they are ``lag`` versions older than they are, as if its
    generator loaded each new version late: groups from step 2 on reach the learner stale."""

    lag = 2

    def snapshot(self, version: int) -> PolicySnapshot:
        snap = super().snapshot(version)
        return PolicySnapshot(max(0, version - self.lag), snap.params)


@pytest.mark.parametrize("mode", ["drop", "withhold"])
async def test_stale_groups_are_counted_in_metrics_and_summary(tmp_path: Path, mode: str) -> None:
    """Stale groups reaching the trainer are dropped or withheld as configured, each step's
    metrics and the run summary say how many; withheld batches are still scored."""
    cfg = small("grpo.max_staleness=1", f"grpo.stale_groups='{mode}'", "trainer.eval_every=0")
    async with TrainingManager(cfg, policy=Lagging(cfg.tinylm, seed=0), out=tmp_path) as tm:
        summary = await tm.run()
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    key = "stale_dropped" if mode == "drop" else "stale_withheld"
    other = "stale_withheld" if mode == "drop" else "stale_dropped"
    # batch k is generated by version max(0, k - 1), labelled max(0, k - 3): stale from k = 2
    assert [r[key] for r in rows] == [0, 0, 4, 8, 12, 16]
    assert summary.extra[key] == 16
    if mode == "drop":
        assert other not in rows[0] and other not in summary.extra  # as before the option
        assert all(r["reward"] is None for r in rows[2:])  # nothing left to score (NaN)
    else:
        assert all(r[other] == 0 for r in rows) and summary.extra[other] == 0
        assert all(math.isfinite(r["reward"]) for r in rows)  # scored though not trained
        assert [r["optimizer_steps"] for r in rows] == [2, 2, 0, 0, 0, 0]


async def test_withhold_changes_nothing_when_no_group_is_stale(tmp_path: Path) -> None:
    """In an ordinary run no group is stale, so withhold learns exactly what drop does."""
    curves = {}
    for mode in ("drop", "withhold"):
        cfg = small(f"grpo.stale_groups='{mode}'", "trainer.eval_every=0")
        async with TrainingManager(cfg, out=tmp_path / mode) as tm:
            await tm.run()
            curves[mode] = tm.policy.parameters()
        rows = list(read_records(tmp_path / mode / "metrics.jsonl"))
        assert all(r["stale_dropped"] == 0 and r.get("stale_withheld", 0) == 0 for r in rows)
    for k in curves["drop"]:
        np.testing.assert_array_equal(curves["withhold"][k], curves["drop"][k], err_msg=k)


class CountsGreedy(TinyLM):
    """TinyLM that counts its greedy (evaluation) generate calls."""

    greedy_calls = 0

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        self.greedy_calls += greedy
        return await super().generate(snapshot, example, n, rng, greedy=greedy)


@pytest.mark.parametrize("stop_at", [2, 3])
async def test_a_stop_starts_no_final_evaluation(tmp_path: Path, stop_at: int) -> None:
    """request_stop (what a signal does) ends the run with a checkpoint and the summary but no
    final evaluation: eval_after is the last evaluation when it was of the final policy (the
    one after step 3), else None."""
    cfg = small("steps=20")
    policy = CountsGreedy(cfg.tinylm, seed=cfg.seed)

    def stop(m: BatchMetrics) -> None:
        if m.batch_id == stop_at:
            tm.request_stop("terminated")

    async with TrainingManager(cfg, policy=policy, out=tmp_path, on_batch_complete=stop) as tm:
        summary = await tm.run()
    assert summary.stop_reason == "terminated" and summary.steps_done == stop_at + 1
    evaluations = 1 + (stop_at + 1) // 2  # before training, then after steps 1 and 3
    assert policy.greedy_calls == evaluations * cfg.trainer.eval_size
    last = tm.progress.eval_history[-1]
    assert summary.eval_after == (last[1] if last[0] == stop_at else None)
    assert (tmp_path / "checkpoints" / f"step-{stop_at + 1}").is_dir()


async def test_a_stop_before_the_run_writes_nothing(tmp_path: Path) -> None:
    """A stop asked before run() (a signal during start-up): the run reads nothing more,
    trains nothing and writes no file."""
    out = tmp_path / "run"
    async with TrainingManager(small(), out=out) as tm:
        tm.request_stop("hangup")
        summary = await tm.run()
    assert summary.stop_reason == "hangup" and summary.steps_done == 0 and summary.out is None
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
