"""Score functions: rewards and judges of every shape, and the pairwise LLM judge on the
simulated server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.errors import EngineError
from engine.evaluation.compare.scoring import as_score_fn, call_pairwise
from engine.rewards.rewarder import Rewarder, RewardSpec
from engine.types import Example


async def test_pairwise_llm_judge_against_sim() -> None:
    """PairwiseJudge (a GroupJudge of two) prefers the sim judge's higher-scored text."""
    from engine.config.sections import EndpointConfig
    from engine.endpoints.client import Client
    from engine.evaluation.compare import PairwiseJudge
    from engine.testing.sim import GOOD_WORDS, SimConfig, SimServer

    good = " ".join(sorted(GOOD_WORDS)[:4])
    async with (
        SimServer(SimConfig(latency=0.0)) as sim,
        Client(EndpointConfig(base_url=sim.base_url, model="sim")) as client,
    ):
        judge = PairwiseJudge(client)
        ex = Example(id="x", text="say something")
        assert await judge(ex, good, "zzz qqq") == 1.0
        assert await judge(ex, "zzz qqq", good) == 0.0
        assert await judge(ex, "same", "same") == 0.5


async def test_score_functions_of_every_shape() -> None:
    """Sync, async, inline and Rewarder scores come back as floats; a bad result raises."""

    @dataclass
    class Scored:
        reward: float

    class AsyncJudge:
        async def __call__(self, ex: Example, text: str) -> float:
            return 0.25

    def fails(ex: Example, text: str) -> float:
        raise ValueError("boom")

    ex = Example(id="x", text="in")
    assert await as_score_fn(lambda e, t: 1)(ex, "t") == 1.0
    assert await as_score_fn(AsyncJudge())(ex, "t") == 0.25
    assert await as_score_fn(lambda e, t: Scored(0.5))(ex, "t") == 0.5  # a Score-like result
    assert await as_score_fn(RewardSpec("len", lambda e, t: len(t), inline=True))(ex, "abc") == 3
    assert await as_score_fn(Rewarder([RewardSpec("one", lambda e, t: 1.0)]))(ex, "t") == 1.0
    with pytest.raises(TypeError, match="not a number"):
        await as_score_fn(lambda e, t: True)(ex, "t")
    with pytest.raises(ValueError, match="returned nan"):
        await as_score_fn(lambda e, t: float("nan"))(ex, "t")
    with pytest.raises(EngineError, match="boom"):
        await as_score_fn(Rewarder([RewardSpec("fails", fails)]))(ex, "t")
    with pytest.raises(TypeError, match="not a score function"):
        as_score_fn(RewardSpec("x", 3, inline=True))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected a number in \[0, 1\]"):
        await call_pairwise(lambda e, a, b: 2.0, ex, "a", "b")
