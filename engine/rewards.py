"""Reward stage: reward functions, weighted and combined, with a metric per function.

A reward function is ``(example, output_text) -> float``, sync or async. Sync functions run in
a worker thread (they may be CPU-heavy) unless declared ``inline`` (trivially cheap ones, like
the built-in task's). Several functions combine as a weighted sum; each one's value is kept as
``reward/<name>`` in the step metrics.

A function that raises, or returns a non-finite value, is a *recorded failure*: the rollout's
reward is NaN, its error says which function failed and why, and the advantages mask it. It is
never turned into a silent 0.0 (which would skew every other member's advantage).

Example::

    rewarder = Rewarder([RewardSpec("exact", exact_match, weight=1.0),
                         RewardSpec("length", brevity, weight=0.2)])
    reward, parts, error = await rewarder.score(example, "42")
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from .types import Example

__all__ = ("RewardFn", "RewardSpec", "Rewarder", "Score")

RewardFn = Callable[[Example, str], "float | Awaitable[float]"]


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """One reward function with its name and weight.

    Attributes:
        name: metric name (``reward/<name>``).
        fn: ``(example, output_text) -> float`` or an async function returning float.
        weight: weight in the combined reward.
        inline: run a sync function on the event loop (only for trivially cheap functions).
    """

    name: str
    fn: Callable[[Example, str], Any]
    weight: float = 1.0
    inline: bool = False


@dataclass(frozen=True, slots=True)
class Score:
    """The outcome of scoring one output."""

    reward: float
    """Weighted sum of the parts; NaN when any part failed."""
    parts: dict[str, float]
    """Each function's raw value, by name (NaN for a failed one)."""
    error: str | None = None
    """Which function failed and why, or None."""
    feedback: str | None = None
    """A judge's feedback on the output, when a judge scored it."""


class Rewarder:
    """Combines reward functions; see the module docstring."""

    def __init__(self, functions: Sequence[RewardSpec | Callable[[Example, str], Any]]) -> None:
        specs: list[RewardSpec] = []
        for f in functions:
            if isinstance(f, RewardSpec):
                specs.append(f)
            elif callable(f):
                specs.append(RewardSpec(getattr(f, "__name__", f"reward{len(specs)}"), f))
            else:
                raise TypeError(f"not a reward function: {f!r}")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"reward function names must be unique: {names}")
        if not specs:
            raise ValueError("at least one reward function is needed")
        self.specs = tuple(specs)

    async def _one(self, spec: RewardSpec, example: Example, text: str) -> float:
        fn = spec.fn
        if inspect.iscoroutinefunction(fn):
            value = await fn(example, text)
        elif spec.inline:
            value = fn(example, text)
        else:
            value = await anyio.to_thread.run_sync(fn, example, text)
        if inspect.isawaitable(value):
            value = await value
        return value

    async def score(self, example: Example, text: str) -> Score:
        """Score one output with every function; failures are recorded, never zeroed."""
        parts: dict[str, float] = {}
        total = 0.0
        errors: list[str] = []
        for spec in self.specs:
            try:
                value = await self._one(spec, example, text)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"returned {type(value).__name__}, expected a number")
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
            except Exception as exc:  # a reward function's bug is that rollout's failure
                parts[spec.name] = math.nan
                errors.append(f"reward {spec.name!r} failed: {type(exc).__name__}: {exc}")
                continue
            parts[spec.name] = value
            total += spec.weight * value
        if errors:
            return Score(math.nan, parts, "; ".join(errors))
        return Score(total, parts, None)

    async def score_group(self, example: Example, texts: Sequence[str | None]) -> list[Score]:
        """Score every output of one group concurrently; ``None`` marks a failed generation
        (its Score is NaN with an error, and no reward function is called for it)."""
        out: list[Score] = [Score(math.nan, {}, "generation failed")] * len(texts)

        async def one(i: int, text: str) -> None:
            out[i] = await self.score(example, text)

        async with anyio.create_task_group() as tg:
            for i, text in enumerate(texts):
                if text is not None:
                    tg.start_soon(one, i, text)
        return out
