"""Score a policy on a dataset: one greedy (or sampled) output per example.

::

    result = await evaluate_policy(policy, examples, rewarder, greedy=True)
    result.mean_reward, result.pass_rate, result.errors, result.summary()

Each example is generated once from a snapshot and scored with the run's rewards; the result
gives the mean reward, the pass rate (reward >= ``pass_threshold``), errors, tokens and latency,
and a row per example. ``python -m engine eval`` (:mod:`engine.cli.eval`) is its command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from ..environments.runner import EpisodeRunner, episode_score
from ..policies.base import Policy, PolicySnapshot
from ..rewards.rewarder import Rewarder
from ..types import Example

__all__ = ("EvalResult", "evaluate_policy", "jsonable")


@dataclass(slots=True)
class EvalResult:
    """What an evaluation measured.

    Attributes:
        n: examples evaluated.
        mean_reward: mean reward over scored examples (NaN when none scored).
        pass_rate: fraction of all examples with reward >= the pass threshold.
        errors: examples whose generation or scoring failed (not in ``mean_reward``).
        prompt_tokens, completion_tokens: tokens spent on generation.
        latency_p50, latency_p95: request latency percentiles, seconds.
        wall_time: seconds for the whole evaluation.
        rows: per example: ``id``, ``input``, ``target``, ``output``, ``reward``, ``parts``,
            ``error``, ``latency``.
    """

    n: int
    mean_reward: float
    pass_rate: float
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_p50: float
    latency_p95: float
    wall_time: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the rows, as JSON data (NaN as None)."""
        names = ("n", "mean_reward", "pass_rate", "errors", "prompt_tokens")
        names += ("completion_tokens", "latency_p50", "latency_p95", "wall_time")
        return jsonable({k: getattr(self, k) for k in names})


async def evaluate_policy(
    policy: Policy,
    examples: Sequence[Example],
    rewarder: Rewarder,
    *,
    snapshot: PolicySnapshot | None = None,
    greedy: bool = True,
    seed: int = 0,
    concurrency: int = 16,
    pass_threshold: float = 1.0,
    on_result: Callable[[int, dict[str, Any]], Any] | None = None,
    episodes: EpisodeRunner | None = None,
) -> EvalResult:
    """Generate one output per example from ``snapshot`` and score it.

    Args:
        policy: any :class:`~engine.policies.base.Policy`.
        examples: what to evaluate on.
        rewarder: a :class:`~engine.rewards.rewarder.Rewarder`.
        snapshot: the parameters to use; default the policy's live snapshot (prompt policy)
            or ``policy.snapshot(0)``.
        greedy: argmax decoding (the prompt policy: its most probable candidate at
            temperature 0); else sampled with generators seeded by ``(seed, i)``.
        concurrency: examples in flight at once (the client's limits apply on top).
        pass_threshold: a reward at or above it counts as a pass.
        on_result: called with ``(done_count, row)`` after each example.
        episodes: with an ``[environment]``, each example is one episode, scored by its
            environment (the row's ``output`` is its answer, ``ended`` why it ended).
    """
    if snapshot is None:
        snapshot = policy.live_snapshot() or policy.snapshot(0)
    snap: PolicySnapshot = snapshot
    rows: list[dict[str, Any] | None] = [None] * len(examples)
    limiter = anyio.Semaphore(max(1, concurrency))
    done = 0
    t0 = time.perf_counter()

    async def one(i: int, ex: Example) -> None:
        nonlocal done
        async with limiter:
            rng = np.random.default_rng([seed, i])
            row = await _evaluate_one(policy, snap, rewarder, ex, rng, greedy, episodes)
            rows[i] = row
            done += 1
            if on_result is not None:
                on_result(done, row)

    async with anyio.create_task_group() as tg:
        for i, ex in enumerate(examples):
            tg.start_soon(one, i, ex)
    return _result([r for r in rows if r is not None], pass_threshold, time.perf_counter() - t0)


async def _evaluate_one(
    policy: Policy,
    snapshot: PolicySnapshot,
    rewarder: Rewarder,
    ex: Example,
    rng: np.random.Generator,
    greedy: bool,
    episodes: EpisodeRunner | None = None,
) -> dict[str, Any]:
    """One example's row: its output, scored unless its generation failed."""
    if episodes is not None:
        sample = (await episodes.generate(policy, snapshot, ex, 1, rng, greedy=greedy))[0]
    else:
        sample = (await policy.generate(snapshot, ex, 1, rng, greedy=greedy))[0]
    row: dict[str, Any] = {
        "id": ex.id,
        "input": ex.text,
        "target": ex.target,
        "output": sample.text,
        "reward": math.nan,
        "parts": {},
        "error": sample.error,
        "latency": sample.latency,
        "prompt_tokens": sample.usage.prompt_tokens,
        "completion_tokens": sample.usage.completion_tokens,
        "choice": sample.choice,
    }
    if sample.episode is not None:
        row["ended"] = sample.episode.ended
        score = episode_score(sample)
        row["reward"], row["parts"], row["error"] = score.reward, score.parts, score.error
    elif sample.error is None:
        score = await rewarder.score(ex, sample.text)
        row["reward"], row["parts"], row["error"] = score.reward, score.parts, score.error
    return row


def _result(got: list[dict[str, Any]], pass_threshold: float, wall_time: float) -> EvalResult:
    """The rows' summary: mean reward over the scored ones, pass rate over all of them."""
    rewards = np.array([r["reward"] for r in got], dtype=np.float64)
    ok = np.isfinite(rewards)
    lat = np.array([r["latency"] for r in got if r["error"] is None], dtype=np.float64)
    p50, p95 = (float(x) for x in np.percentile(lat, [50, 95])) if lat.size else (0.0, 0.0)
    return EvalResult(
        n=len(got),
        mean_reward=float(rewards[ok].mean()) if ok.any() else math.nan,
        pass_rate=float((rewards[ok] >= pass_threshold).sum() / len(got)) if got else math.nan,
        errors=int((~ok).sum()),
        prompt_tokens=int(sum(r["prompt_tokens"] for r in got)),
        completion_tokens=int(sum(r["completion_tokens"] for r in got)),
        latency_p50=p50,
        latency_p95=p95,
        wall_time=wall_time,
        rows=got,
    )


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as JSON data: non-finite floats (also in nested dicts) become None."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return {k: fix(v) for k, v in row.items()}
