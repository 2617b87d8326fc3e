"""Run directories the evaluation tests read: a short tinylm run, and a synthetic run with
every metric the report plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.config.loading import load_config
from engine.evaluation.compare import compare_scores
from engine.telemetry.monitor import convergence
from engine.training.trainer import TrainingManager
from engine.types import Example

TRAIN = [
    "steps=12",
    "optim.lr=0.01",
    "data.batch_size=8",
    "grpo.group_size=8",
    "data.num_examples=500",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=0",
]
"""A short tinylm run (12 steps at lr 0.01) whose final checkpoint beats its step-0 policy."""

STEPS = 30
"""Steps of the synthetic run."""

ALL_CHARTS = (
    "chart-reward",
    "chart-policy-loss",
    "chart-kl-to-the-reference-policy",
    "chart-entropy",
    "chart-clip-ratio",
    "chart-learning-rate",
    "chart-gradient-norm",
    "chart-groups-without-signal",
    "chart-tokens-per-step",
    "chart-spend",
    "chart-request-latency",
    "chart-errors-by-class",
    "chart-prompt-candidates",
)
"""The ids of the charts the synthetic run has data for."""


def train_tinylm(out: Path) -> Path:
    """Train the :data:`TRAIN` run into ``out``; returns ``out``."""

    async def train() -> None:
        async with TrainingManager(load_config(None, TRAIN), out=out) as tm:
            await tm.run()

    anyio.run(train)
    return out


def good_share(ex: Example, text: str) -> float:
    """The share of a text's words that the simulated model prefers."""
    from engine.testing.sim import GOOD_WORDS

    words = text.split()
    return sum(w in GOOD_WORDS for w in words) / max(1, len(words))


def word_examples(n: int) -> list[Example]:
    """``n`` examples ``e0`` ... whose texts share one word."""
    return [Example(id=f"e{i}", text=f"word{i} shared") for i in range(n)]


def _row(step: int) -> dict[str, Any]:
    t = step / STEPS
    logits = [1.0 - t, 0.5 + 2.0 * t, 0.2]
    z = sum(math.exp(v) for v in logits)
    row: dict[str, Any] = {
        "step": step,
        "reward": 0.1 + 0.6 * t + 0.03 * math.sin(step),
        "reward_std": 0.2 - 0.1 * t,
        "policy_loss": -0.01 * math.cos(step / 3),
        "kl": 0.002 * step,
        "entropy": 1.95 - 0.4 * t,
        "clip_ratio": 0.05 * t,
        "clip_ratio/low": 0.02 * t,
        "clip_ratio/high": 0.03 * t,
        "lr": 0.001 * min(1.0, (step + 1) / 5),
        "grad_norm": 0.3 + 0.1 * math.sin(step / 2),
        "frac_reward_zero_std": 0.5 * (1 - t),
        "tokens/prompt": 768 + 10 * step,
        "tokens/completion": 400 + 5 * step,
        "cost/step_usd": 0.001,
        "cost/total_usd": 0.001 * (step + 1),
        "requests/errors": int(step % 7 == 3) + int(step % 11 == 5),
        "latency/p50": 0.04,
        "latency/p95": 0.08,
        "latency/p99": 0.12 + 0.01 * (step % 4),
    }
    if step % 7 == 3:
        row["errors/rate_limit"] = 1
    if step % 11 == 5:
        row["errors/timeout"] = 1
    if step % 10 == 9:
        row["eval/reward"] = 0.15 + 0.5 * t
    for i, v in enumerate(logits):
        row[f"candidate_prob/{i}"] = math.exp(v) / z
    if step == 12:
        row["reward"] = None  # a step whose rollouts all failed: NaN is written as null
    return row


def write_synthetic_run(d: Path) -> Path:
    """A run directory with every metric the report plots, a comparison and a torn last line."""
    d.mkdir()
    lines = b"".join(orjson.dumps(_row(s)) + b"\n" for s in range(STEPS))
    (d / "metrics.jsonl").write_bytes(lines + b'{"step": 30, "rew')  # crash mid-line
    rewards = [_row(s)["reward"] or math.nan for s in range(STEPS)]
    summary = {
        "steps_done": STEPS,
        "stop_reason": "steps",
        "wall_time": 12.5,
        "reward_first": 0.12,
        "reward_last": 0.68,
        "eval_before": 0.1,
        "eval_after": 0.6,
        "best_eval": 0.62,
        "out": str(d),
        "policy": "prompt",
        "convergence": convergence(rewards),
        "requests": 480,
        "spent_usd": 0.001 * STEPS,
        "budget_usd": 0.05,
    }
    (d / "summary.json").write_bytes(orjson.dumps(summary))
    (d / "config.json").write_bytes(orjson.dumps({"steps": STEPS, "policy": "prompt"}))
    m = compare_scores("quality", [0.1, 0.2, 0.3, 0.2], [0.3, 0.4, 0.3, 0.5], n_resamples=500)
    comparison = {
        "model_a": "base <prompt>",
        "model_b": "tuned",
        "n_inputs": 4,
        "samples_per_input": 2,
        "seed": 0,
        "confidence": 0.95,
        "metrics": {"quality": m.to_dict()},
        "samples": [{"id": "e0", "input": "2 + 2?", "a": "5", "b": "4 <b>bold</b>"}],
    }
    (d / "comparison.json").write_bytes(orjson.dumps(comparison))
    return d
