"""The hf policy on Gemma 3 270M on CPU, generating in-process: GRPO steps through the
TrainingManager, and a policy-improvement check on a fixed scored batch, and exact resume;
multi-turn calculator episodes in the text protocol trained with loss masks.

One model is loaded for the module (the GGUF converted once into the cache of
:func:`engine.policies.hf.loading.cache_root`: ~2 minutes the first time on 2 cores, seconds
after). Skipped only where torch is not installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from engine.config.loading import load_config
from engine.config.sections import GRPOConfig, OptimConfig
from engine.data import datasets
from engine.environments.base import EpisodeLimits
from engine.environments.calculator import INSTRUCTION as CALC_INSTRUCTION
from engine.environments.calculator import CalculatorEnvironment
from engine.environments.runner import EpisodeRunner, episode_score
from engine.policies.hf.policy import HFPolicy
from engine.rewards.functions import exact_match
from engine.telemetry.records import read_records
from engine.training.trainer import BatchMetrics, TrainingManager
from engine.types import Example, Rollout, Sample

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "hf_sentiment.toml"


@pytest.fixture(scope="module")
def gemma() -> Iterator[HFPolicy]:
    config = load_config(EXAMPLE_CONFIG)
    yield HFPolicy.from_config(config.hf, seed=0)


async def _scored_batch(policy: HFPolicy) -> tuple[list[Rollout], np.ndarray]:
    """8 sampled completions of each of four reviews, scored by exact_match against the
    label, with group-relative advantages; groups with one reward throughout are left out."""
    reviews = [("Everything about this stay was dreadful.", "negative"),
               ("Smooth flight, friendly crew and tasty food.", "positive"),
               ("Our guide was late and the tour was a mess.", "negative"),
               ("The cleaner did a fantastic job, the house sparkles.", "positive")]  # fmt: skip
    snap = policy.snapshot(0)
    rng = np.random.default_rng(0)
    rollouts: list[Rollout] = []
    adv: list[float] = []
    for j, (text, label) in enumerate(reviews):
        example = Example(f"r{j}", text, target=label)
        samples = await policy.generate(snap, example, 8, rng)
        rewards = np.array([exact_match(example, s.text) for s in samples])
        if rewards.std() == 0:
            continue
        a = (rewards - rewards.mean()) / rewards.std()
        rollouts += [
            Rollout(f"0-{j}", i, 0, s, reward=r)
            for i, (s, r) in enumerate(zip(samples, rewards, strict=True))
        ]
        adv += a.tolist()
    return rollouts, np.array(adv)


async def test_one_update_raises_the_good_completions_and_lowers_the_bad(gemma: HFPolicy) -> None:
    rollouts, adv = await _scored_batch(gemma)
    assert (adv > 0).any() and (adv < 0).any()
    before = await anyio.to_thread.run_sync(gemma.completion_logprobs, rollouts)
    gemma.configure_optimizer(OptimConfig(lr=1e-4))
    metrics = await anyio.to_thread.run_sync(
        functools.partial(gemma.update, rollouts, adv, grpo=GRPOConfig(beta=0.01), lr=1e-4)
    )
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    after = await anyio.to_thread.run_sync(gemma.completion_logprobs, rollouts)

    def mean(lps: list[np.ndarray], sign: float) -> float:
        return float(np.mean([lp.mean() for lp, a in zip(lps, adv, strict=True) if a * sign > 0]))

    print("mean logp +:", mean(before, 1), "->", mean(after, 1))
    print("mean logp -:", mean(before, -1), "->", mean(after, -1))
    assert mean(after, +1) > mean(before, +1)
    assert mean(after, -1) < mean(before, -1)


async def test_three_grpo_steps_move_the_adapter(gemma: HFPolicy, tmp_path: Path) -> None:
    config = load_config(
        EXAMPLE_CONFIG,
        ["steps=3", "trainer.eval_every=0", "trainer.checkpoint_every=0", "optim.lr=0.001"],
    )
    start = gemma.trainable_arrays()
    async with TrainingManager(config, policy=gemma, out=tmp_path) as tm:
        summary = await tm.run()
    assert summary.steps_done == 3
    rows = list(read_records(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in ("reward", "policy_loss", "kl", "entropy", "clip_ratio", "grad_norm"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["step"], key, r[key])
        assert r["tokens/completion"] > 0
    end = gemma.trainable_arrays()
    assert any(not np.array_equal(start[k], end[k]) for k in start)
    print("step_time", [round(r["step_time"], 1) for r in rows])


async def test_a_stopped_and_resumed_run_ends_with_the_same_adapter(
    gemma: HFPolicy, tmp_path: Path
) -> None:
    """2 steps straight, and 1 step, a stop, a resume and 1 more, from the same adapter: the
    same adapter weights and the same losses (CPU, one model thread)."""
    overrides = ["steps=2", "trainer.eval_every=0", "trainer.checkpoint_every=1",
                 "optim.lr=0.001", "grpo.entropy_coef=0.01",
                 "data.batch_size=1", "grpo.mini_batch_size=1"]  # fmt: skip
    config = load_config(EXAMPLE_CONFIG, overrides)
    arrays, meta = gemma.state()

    async def run(out: Path, *, stop_after: int | None = None, resume: bool = False) -> None:
        def stop(m: BatchMetrics) -> None:
            if stop_after is not None and m.batch_id == stop_after:
                tm.request_stop()

        async with TrainingManager(config, policy=gemma, out=out, on_batch_complete=stop) as tm:
            await tm.run(resume=out if resume else None)

    gemma.load_state(arrays, meta)
    await run(tmp_path / "straight")
    straight = gemma.trainable_arrays()
    gemma.load_state(arrays, meta)
    await run(tmp_path / "resumed", stop_after=0)
    assert [r["step"] for r in read_records(tmp_path / "resumed" / "metrics.jsonl")] == [0]
    gemma.load_state(arrays, meta)  # the resume must restore the checkpoint's adapter itself
    await run(tmp_path / "resumed", resume=True)
    resumed = gemma.trainable_arrays()
    start = {k.removeprefix("params/"): v for k, v in arrays.items()}
    assert any(not np.array_equal(straight[k], start[k]) for k in start)
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    losses = [
        [r["policy_loss"] for r in read_records(tmp_path / d / "metrics.jsonl")]
        for d in ("straight", "resumed")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2


@pytest.mark.slow
async def test_example_config_raises_heldout_accuracy(tmp_path: Path) -> None:
    """examples/hf_sentiment.toml as it is (its own freshly loaded base model): held-out
    greedy accuracy before and after training (python -m pytest -m slow -s)."""
    config = load_config(EXAMPLE_CONFIG, [f"out='{tmp_path}'"])
    async with TrainingManager(config, out=tmp_path) as tm:
        summary = await tm.run()
    print(
        f"hf_sentiment: steps {summary.steps_done}, wall {summary.wall_time:.0f} s, "
        f"held-out accuracy {summary.eval_before} -> {summary.eval_after}"
    )
    assert summary.eval_before is not None and summary.eval_after is not None
    assert summary.eval_after > summary.eval_before


CALC_DEMO = (
    "\n\nProblem: A shelf has 12 rows of 7 books. How many books are on the shelf?\n"
    '<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>\n'
    "<tool_result>84</tool_result>\nAnswer: 84\n\nProblem:"
)


async def test_calculator_episodes_in_the_text_protocol_train_with_masks(gemma: HFPolicy) -> None:
    """The calculator task with the text protocol on Gemma 3 270M (issue 15): greedy episode
    reward on held-out problems before and after two GRPO steps on G sampled episodes each,
    every episode ONE sequence whose environment tokens are masked out of the loss.

    Asserts structure, not improvement: episodes call the tool and read its result, the
    masks mark exactly the policy's tokens, the updates count only those tokens and move the
    adapter. The figures print with ``-s``."""
    arrays, meta = gemma.state()
    own = gemma.hf
    # from the base model whatever the tests before trained: LoRA B = 0 is the fresh adapter
    gemma.load_state(
        {k: np.zeros_like(v) if ".lora_B." in k else v for k, v in arrays.items()}, meta
    )
    # a turn ends at </tool_call> (the protocol's stop) or a blank line; the prompt is the
    # runner's: the tool instructions, the task's instruction with one demonstration, the problem
    gemma.hf = dataclasses.replace(own, prompt_template="{text}\n", stop=("\n\n",))
    try:
        env = CalculatorEnvironment(instruction=CALC_INSTRUCTION + CALC_DEMO)
        limits = EpisodeLimits(max_turns=3, turn_max_tokens=32, max_tokens=640)
        problems = datasets.load("calculator")
        held_out, train = problems[:2], problems[2:4]
        rng = np.random.default_rng(0)

        runner = EpisodeRunner(env, limits, protocol="text")

        async def evaluate(version: int) -> list[Sample]:
            snap = gemma.snapshot(version)
            return [await runner.run(gemma, snap, ex, rng, greedy=True) for ex in held_out]

        before = await evaluate(0)
        gemma.configure_optimizer(OptimConfig(lr=1e-4))
        start = gemma.trainable_arrays()
        episodes: list[Sample] = [*before]
        train_rewards = []
        for step, ex in enumerate(train):
            samples = await runner.generate(gemma, gemma.snapshot(step), ex, 3, rng)
            episodes += samples
            assert all(s.error is None for s in samples), [s.error for s in samples]
            rewards = np.array([episode_score(s).reward for s in samples])
            train_rewards.append(rewards.tolist())
            adv = rewards - rewards.mean()
            if rewards.std() > 0:
                adv = adv / rewards.std()
            rollouts = [Rollout(f"{step}-0", i, step, s, reward=r)
                        for i, (s, r) in enumerate(zip(samples, rewards, strict=True))]  # fmt: skip
            metrics = await anyio.to_thread.run_sync(
                functools.partial(gemma.update, rollouts, adv, grpo=GRPOConfig(beta=0.04), lr=1e-4)
            )
            assert all(math.isfinite(v) for v in metrics.values()), metrics
            own_tokens = sum(int(s.loss_mask.sum()) for s in samples)
            assert metrics["tokens"] == own_tokens
            if any(len(s.episode.turns) > 1 for s in samples):
                assert own_tokens < sum(len(s.token_ids) for s in samples)
        after = await evaluate(len(train))
        episodes += after
        end = gemma.trainable_arrays()
    finally:
        gemma.hf = own
        gemma.load_state(arrays, meta)
    assert any(not np.array_equal(start[k], end[k]) for k in start)
    for s in episodes:  # one sequence per episode, the environment's tokens masked out
        assert s.loss_mask is not None and len(s.loss_mask) == len(s.token_ids) == len(s.logprobs)
        assert np.isnan(s.logprobs).tolist() == (~s.loss_mask).tolist()
        turns = s.episode.turns
        assert turns and s.episode.ended in ("done", "max_turns", "max_tokens")
        # every turn but the last was answered: environment tokens exactly then
        assert s.loss_mask.all() if len(turns) == 1 else (~s.loss_mask).any()
    called = [s for s in episodes if s.episode.tool_calls > 0]
    answered = [s for s in called if len(s.episode.turns) > 1]
    assert answered, "no episode called the calculator and read its result"
    result = gemma.tokenizer.decode(answered[0].token_ids[~answered[0].loss_mask])
    assert "<tool_result>" in result and "</tool_result>" in result
    reward = [[episode_score(s).reward for s in run] for run in (before, after)]
    print(f"calculator greedy reward on {len(held_out)} held-out problems: before {reward[0]} "
          f"-> after {reward[1]}; train episode rewards by step {train_rewards}; "
          f"episodes with a tool call {len(called)}/{len(episodes)}")  # fmt: skip
