"""The prompt policy against a real model: Gemma 3 270M (a base model) on llama.cpp.

The task is the built-in ``sentiment`` dataset with ``examples/local.toml``: completions mode,
three-token answers, six candidates (2 instructions x zero-shot + 2 label-balanced demo sets).
Measured on this machine before the test was written (24 held-out reviews, greedy): both
zero-shot candidates score 0.00 (the model continues the review instead of labelling it), the
four demo candidates 0.88-0.96. The base prompt is candidate 0, so the untrained policy's greedy
answer is the base prompt's; training has to find the demo candidates from rewards alone.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.data import datasets
from engine.data.sampler import is_heldout
from engine.endpoints.client import Client
from engine.policies.prompt import PromptPolicy
from engine.rollout.evaluate import evaluate_policy
from engine.telemetry.events import EventLog
from engine.training.assembly import build_rewarder
from engine.training.trainer import TrainingManager

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parents[2]


def sign_test_p(improved: int, worsened: int) -> float:
    """One-sided exact sign test: P(>= improved of improved + worsened flips | no effect)."""
    n = improved + worsened
    return sum(math.comb(n, k) for k in range(improved, n + 1)) / 2**n if n else 1.0


async def test_prompt_policy_improves_heldout_accuracy(
    llama_base_url: str, llama_model: str
) -> None:
    """Four GRPO steps (64 rollouts) move greedy held-out accuracy well beyond noise."""
    cfg = load_config(
        ROOT / "examples" / "local.toml",
        [
            f"endpoint.base_url='{llama_base_url}'",
            f"endpoint.model='{llama_model}'",
            "steps=4",
            "trainer.eval_every=0",  # evaluated below, once before and once after
        ],
    )
    examples = datasets.load("sentiment")
    heldout = [e for e in examples if is_heldout(e, cfg.data.eval_fraction, cfg.seed)]
    heldout = heldout[: cfg.trainer.eval_size]
    events = EventLog(None)
    t0 = time.perf_counter()
    async with Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry, events=events) as client:
        policy = PromptPolicy.from_config(
            cfg, client, examples=examples, instructions=cfg.prompt.instructions
        )
        rewarder = build_rewarder(cfg)
        base = await evaluate_policy(policy, heldout, rewarder, concurrency=8)
        assert base.errors == 0
        async with TrainingManager(
            cfg, policy=policy, rewarder=rewarder, train=examples, out=None, events=events
        ) as trainer:
            summary = await trainer.run()
            rollouts = sum(int(m.get("rollouts", 0)) for m in trainer.history)
        tuned = await evaluate_policy(policy, heldout, rewarder, concurrency=8)
    wall = time.perf_counter() - t0

    assert tuned.errors == 0 and summary.steps_done == 4
    before = [r["reward"] for r in base.rows]
    after = [r["reward"] for r in tuned.rows]
    improved = sum(a > b for a, b in zip(after, before, strict=True))
    worsened = sum(a < b for a, b in zip(after, before, strict=True))
    p = sign_test_p(improved, worsened)
    best = policy.best()
    report = (
        f"held-out accuracy (greedy, {len(heldout)} reviews): base {base.mean_reward:.3f} -> "
        f"tuned {tuned.mean_reward:.3f}; {improved} improved, {worsened} worsened, "
        f"sign test p = {p:.2g}; {rollouts} training rollouts, {events.count} requests, "
        f"{wall:.0f} s; best candidate: {best.instruction!r} with {len(best.demos)} demos"
    )
    print(report)
    assert rollouts == 4 * cfg.data.batch_size * cfg.grpo.group_size, report
    assert best.demos, report  # the mass moved to a few-shot candidate
    assert tuned.mean_reward >= base.mean_reward + 0.25, report
    assert p < 0.01, report
