"""Episodes against the simulated server with scripted tool calls: chat tools and text tags,
parallel calls, failing tools, malformed calls, the per-episode limits, events per turn, and
groups of episodes in the rollout stage."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
import pytest

from engine.config.loading import load_config
from engine.config.sections import (
    EndpointConfig,
    EnvironmentConfig,
    GRPOConfig,
    LimitsConfig,
    PromptPolicyConfig,
    RetryConfig,
    RolloutConfig,
    RunConfig,
)
from engine.endpoints.client import Client
from engine.environments.base import EpisodeLimits, EpisodeRecord, Tool
from engine.environments.calculator import CalculatorEnvironment, CalculatorEpisode
from engine.environments.runner import EpisodeRunner, episode_score
from engine.environments.text_protocol import render_call
from engine.environments.tools import FunctionTool
from engine.errors import ConfigError
from engine.policies.prompt import PromptPolicy
from engine.rewards.rewarder import Rewarder
from engine.rollout.groups import GroupRunner, RolloutCounters
from engine.telemetry.events import EventLog
from engine.testing.sim import (
    Faults,
    SimConfig,
    SimReply,
    SimRequest,
    SimServer,
    SimToolCall,
    ToolScript,
)
from engine.types import Example

NO_FAULTS = Faults()
ZERO = Rewarder([lambda ex, text: 0.0])  # unused: episodes are scored by their environment
EX = Example("q1", "What is 2+2, and what is 3*3? Add them.", target="13")
PARALLEL = SimReply(
    tool_calls=(
        SimToolCall("calculator", {"expression": "2+2"}),
        SimToolCall("calculator", {"expression": "3*3"}),
    )
)
ALWAYS_CALLS = SimReply(tool_calls=(SimToolCall("calculator", {"expression": "1+1"}),))


class Recorder:
    """A fake model that keeps every request it answers (for assertions) and asks a script."""

    def __init__(self, script: ToolScript) -> None:
        self.script = script
        self.requests: list[SimRequest] = []

    def __call__(self, req: SimRequest) -> Any:
        self.requests.append(req)
        return self.script(req)


@asynccontextmanager
async def endpoint_policy(
    model: Any,
    mode: Literal["chat", "completions"] = "chat",
    *,
    events: EventLog | None = None,
    latency: float = 0.0,
    faults: Faults = NO_FAULTS,
    retry: RetryConfig | None = None,
) -> AsyncIterator[tuple[PromptPolicy, SimServer]]:
    """A prompt policy (one instruction) on a client of a simulated server serving ``model``."""
    async with SimServer(SimConfig(model=model, latency=latency, faults=faults, seed=1)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, mode=mode, max_tokens=64)
        async with Client(
            endpoint, limits=LimitsConfig(max_concurrency=8), events=events,
            retry=retry or RetryConfig(backoff_base=0.0, max_attempts=2),
        ) as client:  # fmt: skip
            policy = PromptPolicy(
                client, PromptPolicyConfig(), endpoint=endpoint, instructions=["Solve it."]
            )
            yield policy, sim


async def one_episode(
    policy: PromptPolicy, runner: EpisodeRunner, example: Example = EX
) -> EpisodeRecord:
    sample = (await runner.generate(policy, policy.snapshot(0), example, 1, rng()))[0]
    assert sample.episode is not None
    return sample.episode


def rng(i: int = 0) -> np.random.Generator:
    return np.random.default_rng([0, i])


# ----------------------------------------------------------------------------- chat tools


async def test_parallel_chat_calls_answered_by_tool_messages_in_call_order() -> None:
    model = Recorder(ToolScript([PARALLEL, "The sum is 4 + 9. Answer: 13"]))
    async with endpoint_policy(model) as (policy, _):
        runner = EpisodeRunner(CalculatorEnvironment(), EpisodeLimits(max_turns=4))
        sample = (await runner.generate(policy, policy.snapshot(0), EX, 1, rng()))[0]
    record = sample.episode
    assert record is not None and sample.error is None
    assert record.ended == "done" and len(record.turns) == 2
    assert [c.id for c in record.turns[0].tool_calls] == ["call_0_0", "call_0_1"]
    assert [r.content for r in record.turns[0].tool_results] == ["4", "9"]
    assert record.final_reward == 1.0 and record.reward == 1.0
    assert episode_score(sample).parts == {"calculator": 1.0}
    assert sample.text == "The sum is 4 + 9. Answer: 13" and sample.choice is not None
    # the first request offered the tool; the second replayed the calls and their results
    first, second = model.requests
    assert first.body["tools"][0]["function"]["name"] == "calculator"
    sent = second.messages
    assert sent is not None
    assistant = sent[-3]
    assert assistant["role"] == "assistant"
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_0_0", "call_0_1"]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in sent[-2:]] == [
        ("tool", "call_0_0", "4"),
        ("tool", "call_0_1", "9"),
    ]


async def test_a_failing_tool_is_read_by_the_model_and_the_episode_goes_on() -> None:
    def flaky(expression: str) -> str:
        raise RuntimeError("the abacus broke")

    class Broken(CalculatorEnvironment):
        async def start(self, example: Example) -> CalculatorEpisode:
            ep = await super().start(example)
            tools: Sequence[Tool] = (
                *ep.tools,
                FunctionTool("abacus", "", {"type": "object"}, flaky, inline=True),
            )
            return dataclasses.replace(ep, tools=tools)

    script = ToolScript(
        [
            SimReply(
                tool_calls=(
                    SimToolCall("calculator", {"expression": "1/0"}),
                    SimToolCall("abacus", {"expression": "2+2"}),
                )
            ),
            "Answer: 13",
        ]
    )
    model = Recorder(script)
    async with endpoint_policy(model) as (policy, _):
        record = await one_episode(policy, EpisodeRunner(Broken()))
    results = record.turns[0].tool_results
    assert results[0].content == "error: division by zero"
    assert results[1].content == "error: RuntimeError: the abacus broke"
    assert record.tool_errors == 2 and record.malformed_calls == 0
    assert record.ended == "done" and record.reward == 1.0
    assert [m["content"] for m in model.requests[1].messages or ()][-2:] == [
        "error: division by zero",
        "error: RuntimeError: the abacus broke",
    ]


async def test_malformed_calls_are_recorded_and_answered() -> None:
    bad = SimReply(
        tool_calls=(
            SimToolCall("calculator", '{"expression": "2+'),  # bad JSON
            SimToolCall("telescope", {"x": 1}),  # unknown tool
            SimToolCall("calculator", "[1, 2]"),  # not an object
        )
    )
    shapes = SimReply(raw_tool_calls=[{"id": "z", "function": {"arguments": "{}"}}, 7])
    model = Recorder(ToolScript([bad, shapes, "Answer: 13"]))
    async with endpoint_policy(model) as (policy, _):
        record = await one_episode(policy, EpisodeRunner(CalculatorEnvironment()))
    assert record.ended == "done" and record.reward == 1.0 and len(record.turns) == 3
    assert record.malformed_calls == 5 and record.tool_errors == 0
    first, second = (t.tool_results for t in record.turns[:2])
    assert "not valid JSON" in first[0].content
    assert "unknown tool 'telescope'" in first[1].content
    assert "must be a JSON object" in first[2].content
    assert [r.call_id for r in second] == ["z", "call_1"]
    assert "no function name" in second[0].content and "not an object" in second[1].content
    # every call, malformed ones too, was answered by a tool message with its id
    tool_ids = [m["tool_call_id"] for m in model.requests[2].messages or () if m["role"] == "tool"]
    assert tool_ids == ["call_0_0", "call_0_1", "call_0_2", "z", "call_1"]


# ----------------------------------------------------------------------------- limits


async def test_max_turns_ends_the_episode_and_it_is_still_scored() -> None:
    model = Recorder(ToolScript([ALWAYS_CALLS]))
    async with endpoint_policy(model) as (policy, _):
        record = await one_episode(policy, EpisodeRunner(CalculatorEnvironment(), EpisodeLimits(3)))
    assert record.ended == "max_turns" and len(record.turns) == 3 and len(model.requests) == 3
    assert record.error is None and record.reward == 0.0  # no answer: the policy's doing


async def test_the_deadline_cuts_the_episode_mid_request() -> None:
    model = Recorder(ToolScript([ALWAYS_CALLS]))
    async with endpoint_policy(model, latency=0.15) as (policy, _):
        limits = EpisodeLimits(max_turns=50, deadline=0.4)
        record = await one_episode(policy, EpisodeRunner(CalculatorEnvironment(), limits))
    assert record.ended == "deadline" and record.error is None
    assert len(record.turns) <= 3 and record.reward == 0.0


async def test_max_tokens_caps_every_turn_and_ends_the_episode() -> None:
    model = Recorder(ToolScript([ALWAYS_CALLS]))
    async with endpoint_policy(model) as (policy, _):
        limits = EpisodeLimits(max_turns=50, max_tokens=60)
        record = await one_episode(policy, EpisodeRunner(CalculatorEnvironment(), limits))
    assert record.ended == "max_tokens" and record.error is None
    assert 1 <= len(record.turns) < 50 and record.tokens >= 1
    caps = [r.max_tokens for r in model.requests]
    assert all(c <= 64 for c in caps) and caps == sorted(caps, reverse=True)


async def test_an_endpoint_failure_fails_the_episode_never_a_zero() -> None:
    async with endpoint_policy(ToolScript([ALWAYS_CALLS]), faults=Faults(server_error=1.0)) as (
        policy,
        _,
    ):
        sample = (
            await EpisodeRunner(CalculatorEnvironment()).generate(
                policy, policy.snapshot(0), EX, 1, rng()
            )
        )[0]
    assert sample.episode is not None and sample.episode.ended == "error"
    assert sample.error is not None and "ServerError" in sample.error
    assert math.isnan(sample.episode.reward) and math.isnan(episode_score(sample).reward)


# ----------------------------------------------------------------------------- events


async def test_every_turn_request_event_carries_episode_and_turn() -> None:
    events = EventLog(None)
    seen: list[dict[str, Any]] = []
    events.subscribe(lambda e: seen.append(dict(e)))
    async with endpoint_policy(ToolScript([PARALLEL, ALWAYS_CALLS, "Answer: 13"]),
                               events=events) as (policy, _):  # fmt: skip
        runner = EpisodeRunner(CalculatorEnvironment())
        samples = await runner.generate(policy, policy.snapshot(0), EX, 2, rng())
    requests = [e for e in seen if e.get("kind") == "generation"]
    assert len(requests) == 6
    ids = {s.episode.id for s in samples if s.episode is not None}
    assert len(ids) == 2
    for eid in ids:
        turns = sorted(e["turn"] for e in requests if e["episode"] == eid)
        assert turns == [0, 1, 2]


# ----------------------------------------------------------------------------- text protocol


async def test_text_protocol_in_completions_mode() -> None:
    script = ToolScript(
        [
            SimReply(" Let me compute.", (SimToolCall("calculator", {"expression": "4+9"}),)),
            " Answer: 13",
        ]
    )
    model = Recorder(script)
    async with endpoint_policy(model, "completions") as (policy, _):
        runner = EpisodeRunner(CalculatorEnvironment())
        sample = (await runner.generate(policy, policy.snapshot(0), EX, 1, rng()))[0]
    record = sample.episode
    assert record is not None and record.ended == "done" and record.reward == 1.0
    first, second = model.requests
    assert "<tool_call>" in first.prompt and "calculator" in first.prompt  # the instructions
    assert first.stop[0] == "</tool_call>" and "tools" not in first.body
    # the turn, its closing tag put back, then the result, then the policy goes on
    assert second.prompt.endswith(
        ' Let me compute.<tool_call>{"name": "calculator", "arguments": {"expression":"4+9"}}'
        "</tool_call>\n<tool_result>13</tool_result>\n"
    )
    assert record.turns[0].tool_calls[0].id == "call_0_0"
    assert sample.text == "Answer: 13"


async def test_text_protocol_in_chat_mode() -> None:
    script = ToolScript([render_call("calculator", {"expression": "4+9"}), "Answer: 13"])
    model = Recorder(script)
    async with endpoint_policy(model, "chat") as (policy, _):
        runner = EpisodeRunner(CalculatorEnvironment(), protocol="text")
        record = await one_episode(policy, runner)
    assert record.reward == 1.0 and "tools" not in model.requests[0].body
    sent = model.requests[1].messages or ()
    assert sent[-2]["role"] == "assistant" and sent[-2]["content"].endswith("</tool_call>")
    assert sent[-1] == {"role": "user", "content": "<tool_result>13</tool_result>"}


async def test_chat_protocol_refused_in_completions_mode() -> None:
    async with endpoint_policy(ToolScript(["x"]), "completions") as (policy, _):
        runner = EpisodeRunner(CalculatorEnvironment(), protocol="chat")
        with pytest.raises(ConfigError, match="chat"):
            await runner.generate(policy, policy.snapshot(0), EX, 1, rng())


# ----------------------------------------------------------------------------- groups


class FailsOnce(CalculatorEnvironment):
    """The calculator, whose ``fail``-th episode (from 1) cannot start."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail
        self.started = 0

    async def start(self, example: Example) -> CalculatorEpisode:
        self.started += 1
        if self.started == self.fail:
            raise RuntimeError("no calculator today")
        return await super().start(example)


def group_config(partial: Literal["retry", "shrink", "drop"]) -> RunConfig:
    return RunConfig(
        policy="prompt",
        grpo=GRPOConfig(group_size=4),
        rollout=RolloutConfig(partial_group=partial, member_retries=1, min_group_size=2),
        environment=EnvironmentConfig(name="calculator", max_turns=4),
    )


@pytest.mark.parametrize("partial", ["shrink", "retry"])
async def test_a_group_of_episodes_masks_the_one_that_failed(
    partial: Literal["retry", "shrink", "drop"],
) -> None:
    script = ToolScript(
        scripts={"2+2": [PARALLEL, "Answer: 13"]}, fallback=lambda req: "Answer: 12"
    )
    async with endpoint_policy(script) as (policy, _):
        cfg = group_config(partial)
        runner = GroupRunner(
            policy, ZERO, cfg,
            episodes=EpisodeRunner(FailsOnce(fail=2), EpisodeLimits(max_turns=4)),
        )  # fmt: skip
        counters = RolloutCounters()
        group = await runner.run(policy.snapshot(0), EX, "0-0", rng(), 0, counters=counters)
    assert group is not None
    stats = counters.statistics()
    if partial == "shrink":
        assert stats.shrunk == 1 and len(group.rollouts) == 3
    else:
        assert stats.complete == 1 and stats.rollouts_retried == 1 and len(group.rollouts) == 4
    assert all(r.reward == 1.0 and r.ok for r in group.rollouts)
    assert stats.rollouts_failed == 1
    metrics = stats.metrics()
    assert metrics["episodes/error"] == 1
    assert metrics["episodes/done"] == (3 if partial == "shrink" else 4)
    assert metrics["episodes/tool_calls"] == 2 * metrics["episodes/done"]


async def test_the_rollout_stage_runs_episodes_from_the_config() -> None:
    async with endpoint_policy(ToolScript([PARALLEL, "Answer: 13"])) as (policy, _):
        runner = GroupRunner.for_policy(policy, ZERO, group_config("retry"))
        assert runner.episodes is not None
        group = await runner.run(policy.snapshot(0), EX, "3-1", rng(), 3)
    assert group is not None and [r.reward for r in group.rollouts] == [1.0] * 4
    assert all(r.reward_parts == {"calculator": 1.0} for r in group.rollouts)
    ids = [r.sample.episode.id for r in group.rollouts if r.sample.episode is not None]
    assert len(set(ids)) == 4 and all(i.startswith("3-1.") for i in ids)


def test_environment_config_is_validated(tmp_path: Any) -> None:
    assert load_config(overrides=["environment.name=calculator"]).environment.max_turns == 8
    for override, key in [
        ("environment.name=not a name", "environment.name"),
        ("environment.max_turns=0", "environment.max_turns"),
        ("environment.deadline=-1", "environment.deadline"),
        ("environment.tools=smoke", "environment.tools"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(overrides=["environment.name=calculator", override])
        assert info.value.key == key
    with pytest.raises(ConfigError, match="chat"):
        load_config(
            overrides=[
                "environment.name=calculator",
                "environment.tools=chat",
                "endpoint.mode=completions",
            ]
        )
    with pytest.raises(ConfigError, match="unknown environment"):
        EpisodeRunner.from_config(load_config(overrides=["environment.name=sudoku"]))
    with pytest.raises(ConfigError, match="cannot import"):
        EpisodeRunner.from_config(load_config(overrides=["environment.name=nowhere:x"]))
