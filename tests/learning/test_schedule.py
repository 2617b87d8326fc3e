"""The learning-rate schedules: warm-up and the decays' hand-computed values."""

from __future__ import annotations

import math

import pytest

from engine.config.sections import OptimConfig
from engine.learning.schedule import lr_at

# ----------------------------------------------------------------------------- schedules


def _cfg(schedule: str, **kw: float) -> OptimConfig:
    return OptimConfig(lr=1.0, schedule=schedule, warmup_steps=10, min_lr_ratio=0.1, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_warmup_is_linear_from_lr_over_warmup(schedule: str) -> None:
    """Update k of the warm-up uses lr * (k + 1) / warmup_steps and reaches lr at its end."""
    cfg = _cfg(schedule)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(4, cfg, 110) == pytest.approx(0.5)
    assert lr_at(9, cfg, 110) == 1.0
    assert lr_at(10, cfg, 110) == 1.0  # first update after warm-up: decay progress 0


def test_constant_schedule() -> None:
    """constant stays at lr after warm-up, and without warm-up from the first update."""
    assert lr_at(500, _cfg("constant"), 110) == 1.0
    assert lr_at(0, OptimConfig(lr=0.3), 10) == 0.3


def test_cosine_schedule_hand_values() -> None:
    """cosine: lr_min + (lr - lr_min) (1 + cos(pi p)) / 2 at a quarter, the middle and the end."""
    cfg = _cfg("cosine")  # decay over steps 10..110, lr_min = 0.1
    assert lr_at(35, cfg, 110) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))  # p = 1/4
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)  # p = 1/2
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)  # p = 1
    assert lr_at(1000, cfg, 110) == pytest.approx(0.1)  # stays at lr_min


def test_linear_schedule_hand_values() -> None:
    """linear: lr - (lr - lr_min) p at a quarter, the middle and the end."""
    cfg = _cfg("linear")
    assert lr_at(35, cfg, 110) == pytest.approx(0.775)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(109, cfg, 110) == pytest.approx(0.109)  # the last update of a 110-step run


def test_schedule_rejects_bad_arguments() -> None:
    """A negative step, or a decaying schedule no longer than its warm-up, raise ValueError."""
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, _cfg("constant"), 10)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(10, _cfg("cosine"), 10)
