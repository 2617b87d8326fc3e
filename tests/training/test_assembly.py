"""The assembly: clients, judges, rewarders and policies built from a config."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from engine.config.loading import load_config
from engine.config.sections import EndpointConfig, RetryConfig, RewardConfig
from engine.endpoints.client import Client
from engine.errors import ConfigError
from engine.rewards.functions import REWARD_FUNCTIONS
from engine.rewards.judges import GroupJudge, LLMJudge
from engine.testing import SimConfig, SimServer
from engine.testing.adversarial import gullible_judge
from engine.training.assembly import (
    build_components,
    build_judge,
    build_rewarder,
    make_client,
    rewarder_from_config,
)
from engine.types import Example

RUBRIC = "Grade whether the response answers the question truthfully."
EX = Example(id="e1", text="Say something.", target="clear")


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[SimServer, Client]]:
    """A simulated server with a scripted judge (scores by on-topic words), and a client."""
    async with SimServer(SimConfig(judge=gullible_judge)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-judge")
        async with Client(endpoint, retry=RetryConfig(max_attempts=1)) as client:
            yield sim, client


async def test_rewarder_from_config() -> None:
    """Functions resolve by name or import path; a judge prompt needs a judge client."""
    cfg = RewardConfig(functions=("contains_answer", "math:fabs"), weights=(2.0, 0.0),
                       format_failure_reward=-0.5)  # fmt: skip
    with pytest.raises(TypeError):  # math.fabs does not take (example, text): a recorded failure
        math.fabs(EX, "x")  # type: ignore[call-arg]
    rewarder = rewarder_from_config(cfg, registry={"math:fabs": lambda e, t: 0.0})
    assert [s.name for s in rewarder.specs] == ["contains_answer", "math:fabs"]
    assert rewarder.specs[0].inline and not rewarder.specs[1].inline
    assert (await rewarder.score(EX, "It is CLEAR.")).reward == 2.0
    assert rewarder.format_failure_reward == -0.5
    with pytest.raises(ConfigError, match="unknown reward function"):
        rewarder_from_config(RewardConfig(functions=("nope",)))
    with pytest.raises(ConfigError, match="cannot import"):
        rewarder_from_config(RewardConfig(functions=("engine.nothing:fn",)))
    with pytest.raises(ConfigError, match="judge client"):
        rewarder_from_config(RewardConfig(judge_prompt=RUBRIC))
    async with serving() as (sim, client):
        group = rewarder_from_config(
            RewardConfig(judge_prompt=RUBRIC, group_judge=True, judge_weight=3.0),
            judge_client=client,
        )
        assert isinstance(group.judges[0].judge, GroupJudge)
        assert [s.reward for s in await group.score_group(EX, ["clear", "wrong"])] == [3.0, 0.0]
        assert sim.counters.judge_requests == 1
    assert {"exact_match", "contains_answer", "numeric_match", "nonempty"} <= set(REWARD_FUNCTIONS)


def test_build_judge_and_rewarder_defaults() -> None:
    """build_judge picks the judge kind; build_rewarder falls back to exact_match."""
    client = make_client(load_config(None, ["endpoint.base_url='http://127.0.0.1:9/v1'"]))
    assert isinstance(build_judge(RUBRIC, client), LLMJudge)
    assert isinstance(build_judge(RUBRIC, client, group=True), GroupJudge)
    rewarder = build_rewarder(load_config(None, ["policy='prompt'"]))
    assert [s.name for s in rewarder.specs] == ["exact_match"] and not rewarder.judges


def test_build_components_tinylm() -> None:
    """The default config gives the embedded LM, the task's inline reward and its examples."""
    config = load_config(None, ["data.num_examples=12"])
    policy, rewarder, examples = build_components(config)
    assert policy.name == "tinylm" and rewarder is not None
    assert rewarder.specs[0].inline and examples is not None and len(examples) == 12
    with pytest.raises(ConfigError, match="endpoint client"):
        build_components(load_config(None, ["policy='prompt'"]))
