"""Exact resume of the hf policy through the TrainingManager: the same adapter after N steps
with and without a stop and resume (CPU, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from engine.config.loading import load_config
from engine.rewards.rewarder import Rewarder, RewardSpec
from engine.telemetry.records import read_records
from engine.training.trainer import BatchMetrics, TrainingManager
from engine.types import Example

from .tiny import tiny_policy

EXAMPLES = [
    Example(f"x{i}", text)
    for i, text in enumerate(
        ["the food was good", "the room was bad", "very great food", "not good", "awful room"] * 4
    )
]


def _goodness(example: Example, text: str) -> float:
    words = text.split()
    return sum(w in ("good", "great", "positive") for w in words) / max(1, len(words))


def _manager(out: Path, **kwargs: object) -> TrainingManager:
    config = load_config(
        None,
        [
            "policy='hf'",
            "steps=4",
            "data.batch_size=2",
            "grpo.group_size=4",
            "grpo.mini_batch_size=1",
            "grpo.epochs=2",
            "grpo.beta=0.04",
            "optim.lr=0.05",
            "optim.schedule='cosine'",
            "optim.warmup_steps=1",
            "trainer.eval_every=0",
            "trainer.checkpoint_every=2",
            "trainer.eval_size=2",
        ],
    )
    return TrainingManager(
        config,
        policy=tiny_policy(lora_dropout=0.1, micro_batch_tokens=24),
        rewarder=Rewarder([RewardSpec("good", _goodness, inline=True)]),
        train=EXAMPLES,
        out=out,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_resume_gives_the_same_adapter(tmp_path: Path) -> None:
    async with _manager(tmp_path / "a") as a:
        await a.run()
        straight = a.policy.trainable_arrays()  # type: ignore[attr-defined]

    def stop_after_2(m: BatchMetrics) -> None:
        if m.batch_id == 1:
            b.request_stop()

    async with _manager(tmp_path / "b", on_batch_complete=stop_after_2) as b:
        first = await b.run()
    assert first.steps_done == 2
    async with _manager(tmp_path / "b") as c:
        await c.run(resume=tmp_path / "b")
        resumed = c.policy.trainable_arrays()  # type: ignore[attr-defined]
    assert set(resumed) == set(straight)
    moved = False
    initial = tiny_policy(lora_dropout=0.1).trainable_arrays()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
        moved |= not np.array_equal(straight[k], initial[k])
    assert moved
    ra = [r["policy_loss"] for r in read_records(tmp_path / "a" / "metrics.jsonl")]
    rb = [r["policy_loss"] for r in read_records(tmp_path / "b" / "metrics.jsonl")]
    assert ra == rb and len(ra) == 4
