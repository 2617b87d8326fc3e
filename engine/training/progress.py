"""What a run has learned about itself, kept across a resume.

The evaluations so far (for early stopping and the summary), the rewards of the first steps
and the USD spent on requests (a resumed run's spend budget continues from it);
:meth:`RunProgress.to_meta` and :meth:`RunProgress.from_meta` put them in a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

__all__ = ("FIRST_STEPS", "RunProgress")

FIRST_STEPS = 3
"""Steps whose rewards make the summary's ``reward_first``."""


@dataclass(slots=True)
class RunProgress:
    """Evaluations and first rewards of a run.

    Attributes:
        best_eval: the best held-out reward so far (``-inf`` before any).
        evals_without_improvement: evaluations since the best improved by more than the
            minimum delta.
        eval_history: ``(step, eval reward)`` of every evaluation; step -1 before training.
        reward_first: train rewards of the run's first :data:`FIRST_STEPS` steps.
        spent_usd: USD spent on requests when the checkpoint was written.
        calls: requests admitted by then (the ``limits.max_requests`` meter).
        tokens: prompt + completion tokens answered by then (``limits.max_total_tokens``).
    """

    best_eval: float = -math.inf
    evals_without_improvement: int = 0
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    reward_first: list[float] = field(default_factory=list)
    spent_usd: float = 0.0
    calls: int = 0
    tokens: int = 0

    def record_step(self, step: int, reward: float) -> None:
        """Keep the reward of one of the first steps."""
        if len(self.reward_first) < FIRST_STEPS and step < FIRST_STEPS:
            self.reward_first.append(reward)

    def record_eval(self, step: int, value: float) -> None:
        """Add an evaluation to the history."""
        self.eval_history.append((step, value))

    def update_best(self, value: float, *, min_delta: float) -> None:
        """An evaluation improves the best when it beats it by more than ``min_delta``."""
        if math.isfinite(value) and value > self.best_eval + min_delta:
            self.best_eval = value
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1

    def out_of_patience(self, patience: int) -> bool:
        """``patience`` evaluations in a row without improvement (0: never)."""
        return bool(patience) and self.evals_without_improvement >= patience

    def best(self) -> float | None:
        """The best evaluation, or None before any finite one."""
        return self.best_eval if math.isfinite(self.best_eval) else None

    def to_meta(self) -> dict[str, Any]:
        """JSON data for a checkpoint's ``trainer`` entry."""
        return {
            "best_eval": self.best(),
            "evals_without_improvement": self.evals_without_improvement,
            "eval_history": self.eval_history,
            "reward_first": self.reward_first,
            "spent_usd": self.spent_usd,
            "calls": self.calls,
            "tokens": self.tokens,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunProgress:
        """The progress a checkpoint's ``trainer`` entry holds."""
        best = meta.get("best_eval")
        return cls(
            best_eval=best if best is not None else -math.inf,
            evals_without_improvement=int(meta.get("evals_without_improvement", 0)),
            eval_history=[(s, v) for s, v in meta.get("eval_history", [])],
            reward_first=list(meta.get("reward_first", [])),
            spent_usd=_spent(meta.get("spent_usd", 0.0)),
            calls=_count(meta.get("calls", 0), "calls"),
            tokens=_count(meta.get("tokens", 0), "tokens"),
        )


def _spent(value: object) -> float:
    """A checkpoint's spent figure, checked (a checkpoint is data).

    Raises:
        CheckpointError: it is not a finite number >= 0.
    """
    if not isinstance(value, bool) and isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number) and number >= 0:
            return number
    raise CheckpointError(f"checkpoint's spent_usd is not a finite number >= 0: {value!r:.40}")


def _count(value: object, name: str) -> int:
    """A checkpoint's call or token count, checked (a checkpoint is data; a checkpoint
    written before these were saved has none: 0).

    Raises:
        CheckpointError: it is not an integer >= 0.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise CheckpointError(f"checkpoint's {name} is not an integer >= 0: {value!r:.40}")
