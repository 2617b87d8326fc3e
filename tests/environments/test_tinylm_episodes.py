"""GRPO on multi-turn calculator episodes of the embedded LM, end to end through the trainer:
the episodes' tokens are trained as one masked sequence each (issue 15)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config.loading import load_config
from engine.config.sections import GRPOConfig
from engine.data import datasets
from engine.environments.base import PolicyTurn, Reply, ToolResult
from engine.environments.calculator import CalculatorEnvironment, CalculatorEpisode
from engine.environments.runner import EpisodeRunner
from engine.policies.tinylm import TinyLM
from engine.telemetry.records import read_records
from engine.training.trainer import TrainingManager
from engine.types import Rollout

DATA = Path(datasets.__file__).resolve().parent / "calculator.jsonl"


@dataclass(slots=True)
class _ToolUseEpisode(CalculatorEpisode):
    """The calculator episode plus a reward of 0.5 for each well-formed call (it reached the
    tool, right or wrong: a learning signal the random initial policy can reach)."""

    async def step(self, turn: PolicyTurn, results: list[ToolResult]) -> Reply:  # type: ignore[override]
        ran = sum(not r.malformed for r in results)
        return Reply(reward=0.5 * ran if ran else None, done=not turn.tool_calls)


class ToolUseEnvironment(CalculatorEnvironment):
    """The calculator task whose episodes also reward each well-formed call."""

    name = "tool_use"

    async def start(self, example):  # type: ignore[no-untyped-def]
        episode = await super().start(example)
        return _ToolUseEpisode(episode.prompt, episode.target)


def _config(tmp_path: Path, env: str, steps: int):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            "policy='tinylm'",
            f"steps={steps}",
            "seed=0",
            f"out='{tmp_path}'",
            "tinylm.vocab='calculator'",
            f"environment.name='{env}'",
            "environment.max_turns=3",
            "grpo.group_size=4",
            "grpo.mini_batch_size=2",
            "grpo.beta=0.01",
            "data.batch_size=2",
            "data.eval_fraction=0.25",
            "trainer.eval_every=2",
            "trainer.eval_size=4",
            "trainer.checkpoint_every=0",
        ]
        + ([f"data.train='{DATA}'"] if ":" in env else []),
    )


async def test_grpo_steps_on_multi_turn_calculator_episodes(tmp_path: Path) -> None:
    """Four GRPO steps of the built-in calculator task (rewards and held-out evaluation by
    the environment) on the embedded LM: multi-turn episodes, updates over the policy's
    tokens only, finite metrics."""
    async with TrainingManager(_config(tmp_path, "calculator", 4), out=tmp_path) as tm:
        summary = await tm.run()
    assert summary.steps_done == 4
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        for key in ("reward", "policy_loss", "kl", "entropy", "tokens"):
            assert math.isfinite(r[key]), (r["step"], key)
        episodes = sum(r[f"episodes/{k}"] for k in ("done", "max_turns", "max_tokens"))
        assert episodes == r["rollouts"] == 8 and r["episodes/error"] == 0
    assert sum(r["episodes/tool_calls"] for r in rows) > 0
    assert sum(r["episodes/turns"] for r in rows) > sum(r["rollouts"] for r in rows)
    assert any("eval/reward" in r for r in rows)


async def test_a_rewarded_tool_call_is_learned_on_the_policy_tokens(tmp_path: Path) -> None:
    """With a reward for each well-formed call, GRPO steps move the parameters (non-zero
    advantages, gradient over the policy's tokens) and the step's token count is the
    policy's tokens of the batch, not the whole episodes."""
    config = _config(tmp_path, f"{__name__}:ToolUseEnvironment", 3)
    policy = TinyLM(config.tinylm, seed=0)
    start = {k: v.copy() for k, v in policy.parameters().items()}
    async with TrainingManager(config, policy=policy, out=tmp_path) as tm:
        summary = await tm.run()
    assert summary.steps_done == 3
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    assert any(r["grad_norm"] > 0 for r in rows)
    assert any(not np.array_equal(v, policy.parameters()[k]) for k, v in start.items())
    # one batch by hand: the update counts the masked-in tokens only
    runner = EpisodeRunner(ToolUseEnvironment())
    example = datasets.load("calculator")[0]
    rng = np.random.default_rng(1)
    samples = []
    while not any(len(s.episode.turns) > 1 for s in samples):
        samples += await runner.generate(policy, policy.snapshot(9), example, 4, rng)
    rollouts = [Rollout("x", i, 9, s) for i, s in enumerate(samples)]
    metrics, _ = policy.loss_and_grad(rollouts, np.linspace(-1, 1, len(samples)), GRPOConfig())
    assert metrics["tokens"] == sum(int(s.loss_mask.sum()) for s in samples)
    assert metrics["tokens"] < sum(len(s.token_ids) for s in samples)
