"""Score functions of a comparison: rewards and judges as one async shape, and pairwise judges.

Every per-sample metric becomes a :data:`ScoreFn`, ``async (example, text) -> float``, by
:func:`as_score_fn`: a plain or async function, an object with an async ``__call__`` (an
LLM judge), a :class:`~engine.rewards.rewarder.RewardSpec` or a whole
:class:`~engine.rewards.rewarder.Rewarder`. A pairwise judge (:data:`PairwiseJudgeFn`, e.g.
:class:`PairwiseJudge`) sees two texts and returns the probability that the first is better.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from ...data.tasks import reward as task_reward
from ...endpoints.client import Client
from ...errors import EngineError
from ...rewards.judges import GroupJudge
from ...rewards.rewarder import Rewarder, RewardSpec
from ...types import Example
from .generation import run_config_of

__all__ = (
    "PairwiseJudge",
    "PairwiseJudgeFn",
    "ScoreFn",
    "ScoreSource",
    "as_score_fn",
    "call_pairwise",
    "default_quality",
    "inline",
)

ScoreFn = Callable[[Example, str], Awaitable[float]]
"""A per-sample metric as the comparator calls it."""

ScoreSource = Rewarder | RewardSpec | Callable[[Example, str], object]
"""What :func:`as_score_fn` accepts: a reward function or judge (sync or async; returning a
number or an object with a ``reward``), a RewardSpec or a Rewarder."""

PairwiseJudgeFn = Callable[[Example, str, str], "float | Awaitable[float]"]
"""``(example, first, second) -> P(first is better)`` in [0, 1]; 0.5 is a tie."""


@runtime_checkable
class _Rewarded(Protocol):
    """A score function's result that carries its number as ``reward`` (a ``Score``)."""

    reward: float


def as_score_fn(source: ScoreSource) -> ScoreFn:
    """``source`` as ``async (example, text) -> float``.

    A sync function runs in a worker thread unless it is an inline RewardSpec. The result
    must be a finite number (a bool is not one); a failed Rewarder score raises
    :class:`EngineError` with its error.
    """
    if isinstance(source, Rewarder):
        return _via_rewarder(source)
    fn, is_inline = (
        (source.fn, source.inline) if isinstance(source, RewardSpec) else (source, False)
    )
    if not callable(fn):
        raise TypeError(f"not a score function: {source!r}")
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(fn.__call__)

    async def call(example: Example, text: str) -> float:
        if is_async:
            value = await fn(example, text)
        elif is_inline:
            value = fn(example, text)
        else:
            value = await anyio.to_thread.run_sync(fn, example, text)
        if inspect.isawaitable(value):
            value = await value
        return _number(value)

    return call


def _via_rewarder(rewarder: Rewarder) -> ScoreFn:
    async def call(example: Example, text: str) -> float:
        score = await rewarder.score(example, text)
        if score.error:
            raise EngineError(score.error)
        return score.reward

    return call


def _number(value: object) -> float:
    """A score function's result as a finite float."""
    if isinstance(value, _Rewarded):
        value = value.reward
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"score function returned {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"score function returned {value}")
    return float(value)


def inline(fn: Callable[[Example, str], float]) -> RewardSpec:
    """A cheap sync function, run on the event loop instead of a worker thread."""
    return RewardSpec(fn.__name__, fn, inline=True)


def default_quality(a: object, b: object) -> ScoreFn | None:
    """The built-in task reward when both models are tinylm policies of the same task."""
    configs = [run_config_of(m) for m in (a, b)]
    tinylm = [c for c in configs if c is not None and c.policy == "tinylm"]
    if len(tinylm) == 2 and len({c.tinylm.task for c in tinylm}) == 1:
        return as_score_fn(RewardSpec("task", task_reward, inline=True))
    return None


async def call_pairwise(judge: PairwiseJudgeFn, example: Example, first: str, second: str) -> float:
    """``judge(example, first, second)``, checked to be a number in [0, 1]."""
    value = judge(example, first, second)
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"pairwise judge returned {value!r}, expected a number in [0, 1]")
    return float(value)


class PairwiseJudge:
    """An LLM judge of two responses: a :class:`engine.rewards.judges.GroupJudge` shown both.

    ``await judge(example, first, second)`` asks the group judge for scores of the two texts
    in one call (its hardened prompt, caching and seeded presentation order apply) and
    returns 1.0 when ``first`` scores higher, 0.0 when ``second`` does, 0.5 for a tie (two
    identical texts are a tie without a call's verdict mattering). The comparator also shows
    A and B in a seeded random order, so a judge's position bias cancels out on average.

    Args:
        judge: a ``GroupJudge``, or an :class:`engine.endpoints.client.Client` to build one on.
        rubric: the rubric when building the judge.
        **judge_kwargs: passed to ``GroupJudge`` when building it (``cache``, ``mode`` ...).

    Raises (per call, recorded by the comparator as failures): the judge's
    ``OutputParseError`` or the client's ``EndpointError``.
    """

    def __init__(
        self,
        judge: GroupJudge | Client,
        rubric: str = "Which response answers the task better: correct, complete, on topic?",
        **judge_kwargs: Any,
    ) -> None:
        if isinstance(judge, GroupJudge):
            self.judge = judge
        else:
            judge_kwargs.setdefault("name", "pairwise")
            self.judge = GroupJudge(judge, rubric, **judge_kwargs)

    async def __call__(self, example: Example, first: str, second: str) -> float:
        """P(``first`` is better) as 1.0, 0.5 or 0.0."""
        if first == second:
            return 0.5
        s1, s2 = await self.judge(example, [first, second])
        return 1.0 if s1 > s2 else 0.0 if s1 < s2 else 0.5
