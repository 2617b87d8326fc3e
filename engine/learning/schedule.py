"""The learner's learning-rate schedule: linear warm-up, then constant, cosine or linear decay."""

from __future__ import annotations

import math

from ..config.sections import OptimConfig

__all__ = ("lr_at",)


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """The learning rate of optimizer update ``step`` (0-based) out of ``total_steps``.

    - Warm-up, ``step < warmup_steps``: ``lr * (step + 1) / warmup_steps``, so the first update
      already moves and update ``warmup_steps - 1`` reaches ``lr``.
    - Then ``constant``: ``lr``.
    - ``cosine``: ``lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2``,
      ``linear``: ``lr - (lr - lr_min) * p``, where ``lr_min = lr * min_lr_ratio`` and
      ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` is clamped to [0, 1]: the
      rate is ``lr`` right after warm-up and reaches ``lr_min`` at ``step == total_steps``
      (and stays there beyond).

    Raises:
        ValueError: negative ``step``, or a decaying schedule with
            ``total_steps <= warmup_steps``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    lr, warmup = optim.lr, optim.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if optim.schedule == "constant":
        return lr
    if total_steps <= warmup:
        raise ValueError(
            f"a {optim.schedule} schedule needs total_steps ({total_steps}) > "
            f"warmup_steps ({warmup})"
        )
    lr_min = lr * optim.min_lr_ratio
    p = min(1.0, (step - warmup) / (total_steps - warmup))
    if optim.schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))
    if optim.schedule == "linear":
        return lr - (lr - lr_min) * p
    raise ValueError(f"unknown schedule {optim.schedule!r}")
