"""Run progress: evaluations, early stopping and the first rewards, kept across a resume."""

from __future__ import annotations

import math

import orjson

from engine.training.progress import RunProgress


def test_best_and_patience() -> None:
    """An evaluation improves the best only by more than the minimum delta; patience counts
    evaluations without improvement."""
    p = RunProgress()
    for step, value in enumerate([0.5, 0.55, 0.52, math.nan]):
        p.record_eval(step, value)
        p.update_best(value, min_delta=0.1)
    assert p.best() == 0.5 and p.evals_without_improvement == 3
    assert p.out_of_patience(3) and not p.out_of_patience(4) and not p.out_of_patience(0)


def test_first_rewards_and_checkpoint_round_trip() -> None:
    """Only the first steps' rewards are kept; the progress survives a checkpoint's JSON."""
    p = RunProgress()
    for step in range(5):
        p.record_step(step, float(step))
    p.record_eval(-1, 0.25)
    p.update_best(0.25, min_delta=0.0)
    back = RunProgress.from_meta(orjson.loads(orjson.dumps(p.to_meta())))
    assert back.reward_first == [0.0, 1.0, 2.0] and back.best_eval == 0.25
    assert back.eval_history == [(-1, 0.25)] and back.evals_without_improvement == 0
    assert RunProgress.from_meta({}).best() is None
