"""evaluate_policy: one output per example, scored; failures are counted, not averaged in."""

from __future__ import annotations

import math

import numpy as np

from engine.config.loading import load_config
from engine.data import tasks
from engine.policies.base import PolicySnapshot
from engine.policies.tinylm import TinyLM
from engine.rewards.rewarder import Rewarder, RewardSpec
from engine.rollout.evaluate import evaluate_policy, jsonable
from engine.training.assembly import task_rewarder
from engine.types import Example, Sample


async def test_greedy_evaluation_is_deterministic_and_complete() -> None:
    """Greedy decoding gives the same rows twice; every example has a row and a reward."""
    config = load_config(None, [])
    policy = TinyLM(config.tinylm, seed=0)
    examples = tasks.make_examples(config.tinylm, 12, 0)
    rewarder = task_rewarder(config)
    seen: list[int] = []
    a = await evaluate_policy(
        policy, examples, rewarder, concurrency=4, on_result=lambda n, row: seen.append(n)
    )
    b = await evaluate_policy(policy, examples, rewarder)
    assert a.n == 12 and sorted(seen) == list(range(1, 13)) and a.errors == 0
    assert [r["output"] for r in a.rows] == [r["output"] for r in b.rows]
    assert math.isfinite(a.mean_reward) and 0.0 <= a.pass_rate <= 1.0
    assert set(a.summary()) >= {"n", "mean_reward", "pass_rate", "latency_p95"}


class Failing:
    """A policy whose every other generation fails."""

    name = "failing"

    def snapshot(self, version: int) -> PolicySnapshot:
        return PolicySnapshot(version, {})

    def live_snapshot(self) -> PolicySnapshot | None:
        return None

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        if example.id.endswith(("1", "3")):
            return [Sample(text="", error="boom")]
        return [Sample(text=example.text)]


async def test_failed_generations_count_as_errors() -> None:
    """A failed generation is an error row with a NaN reward, left out of the mean."""
    examples = [Example(f"e{i}", "yes") for i in range(4)]
    rewarder = Rewarder([RewardSpec("one", lambda ex, text: 1.0, inline=True)])
    result = await evaluate_policy(Failing(), examples, rewarder)  # type: ignore[arg-type]
    assert result.n == 4 and result.errors == 2 and result.mean_reward == 1.0
    assert result.pass_rate == 0.5
    assert jsonable(result.rows[1])["reward"] is None and result.rows[1]["error"] == "boom"
