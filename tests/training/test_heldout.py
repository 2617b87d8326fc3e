"""The in-run held-out evaluation: a failed sample is counted, never scored as 0."""

from __future__ import annotations

import math

from engine.config.loading import load_config
from engine.data.tasks import make_examples
from engine.policies.tinylm import TinyLM
from engine.training.assembly import task_rewarder
from engine.training.heldout import evaluate_heldout
from engine.types import Example


def _unencodable(i: int) -> Example:
    """A prompt the task tokenizer rejects: the embedded LM returns a failed sample for it,
    with empty text (which the task reward would score 0)."""
    return Example(id=f"bad-{i}", text="reverse: x y z", inputs={}, target="1 2 3")


async def test_failed_samples_are_counted_and_left_out_of_the_mean() -> None:
    config = load_config(None, [])
    policy = TinyLM(config.tinylm, seed=0)
    rewarder = task_rewarder(config)
    snap = policy.snapshot(0)
    good = make_examples(config.tinylm, n=12, seed=3)
    alone = await evaluate_heldout(policy, rewarder, snap, good, seed=0)
    assert alone["eval/failures"] == 0 and alone["eval/n"] == 12
    assert math.isfinite(alone["eval/reward"]) and alone["eval/reward"] > 0

    mixed = [*good[:6], _unencodable(0), *good[6:], _unencodable(1), _unencodable(2)]
    ev = await evaluate_heldout(policy, rewarder, snap, mixed, seed=0)
    assert ev["eval/failures"] == 3 and ev["eval/n"] == 15
    # greedy decoding does not depend on the generator: the mean is that of the good ones
    # alone, not diluted by three zeros (12/15 of it)
    assert math.isclose(ev["eval/reward"], alone["eval/reward"]), (ev, alone)


async def test_every_sample_failed_gives_nan_not_zero() -> None:
    config = load_config(None, [])
    policy = TinyLM(config.tinylm, seed=0)
    ev = await evaluate_heldout(
        policy, task_rewarder(config), policy.snapshot(0), [_unencodable(i) for i in range(4)], 0
    )
    assert ev["eval/failures"] == 4
    assert math.isnan(ev["eval/reward"])
