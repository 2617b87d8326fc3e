"""The Rewarder: weighted functions and judges, recorded failures, format failures, the gate."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.config.sections import EndpointConfig, RetryConfig
from engine.endpoints.client import Client
from engine.endpoints.modules import Prediction
from engine.rewards.judges import GroupJudge, LLMJudge
from engine.rewards.rewarder import JudgeSpec, Rewarder, RewardSpec, Score
from engine.rewards.verdicts import Verdict
from engine.telemetry.events import EventLog
from engine.telemetry.records import read_records
from engine.testing import SimConfig, SimRequest, SimServer
from engine.testing.adversarial import gullible_judge
from engine.types import Example

RUBRIC = "Grade whether the response answers the question truthfully."
EX = Example(id="e1", text="Say something.", target="clear")


@asynccontextmanager
async def serving(
    judge: Callable[[SimRequest], str] = gullible_judge,
) -> AsyncIterator[tuple[SimServer, Client]]:
    """A simulated server with a scripted judge (scores by on-topic words), and a client."""
    async with SimServer(SimConfig(judge=judge)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-judge")
        async with Client(endpoint, retry=RetryConfig(max_attempts=1)) as client:
            yield sim, client


def length(example: Example, text: str) -> float:
    """Words in the text (a cheap sync function, run in a thread)."""
    del example
    return float(len(text.split()))


def has_clear(example: Example, text: str) -> float:
    """1 when the text says "clear" (a cheap gate)."""
    del example
    return float("clear" in text)


# ----------------------------------------------------------------------------- functions


async def test_weighted_sum_and_parts() -> None:
    """The reward is the weighted sum; each function's raw value is a part."""
    threads: set[int] = set()

    def threaded(example: Example, text: str) -> float:
        threads.add(threading.get_ident())
        return 2.0

    async def async_fn(example: Example, text: str) -> float:
        return 0.5

    rewarder = Rewarder(
        [RewardSpec("len", length, weight=0.1, inline=True),
         RewardSpec("t", threaded, weight=1.0), RewardSpec("a", async_fn, weight=-2.0)]
    )  # fmt: skip
    score = await rewarder.score(EX, "one two three")
    assert score == Score(0.1 * 3 + 2.0 - 1.0, {"len": 3.0, "t": 2.0, "a": 0.5})
    assert threading.get_ident() not in threads  # the sync function ran in a worker thread


@pytest.mark.parametrize(
    ("value", "error"),
    [(math.nan, "returned nan"), (math.inf, "returned inf"), (True, "returned bool"),
     ("1", "returned str")],
)  # fmt: skip
async def test_bad_return_values_mask_the_rollout(value: object, error: str) -> None:
    """Non-finite or non-numeric returns are recorded failures (NaN), never zeros."""
    rewarder = Rewarder([RewardSpec("bad", lambda e, t: value, inline=True), length])
    score = await rewarder.score(EX, "x")
    assert math.isnan(score.reward)
    assert math.isnan(score.parts["bad"]) and score.parts["length"] == 1.0
    assert score.error is not None and "'bad'" in score.error and error in score.error


async def test_raising_function_masks_only_its_rollout() -> None:
    """A function that raises fails that rollout (NaN, error recorded); its mates are scored."""

    def picky(example: Example, text: str) -> float:
        if text == "boom":
            raise RuntimeError("cannot score this")
        return 1.0

    rewarder = Rewarder([RewardSpec("picky", picky, inline=True)])
    scores = await rewarder.score_group(EX, ["fine", "boom", None, "fine too"])
    assert [s.reward for s in scores][::3] == [1.0, 1.0]
    assert math.isnan(scores[1].reward)
    assert scores[1].error == "reward 'picky' failed: RuntimeError: cannot score this"
    assert math.isnan(scores[2].reward) and scores[2].error == "generation failed"
    s = rewarder.statistics()
    assert (s.groups, s.scored, s.failures) == (1, 3, 1)


def test_construction_errors() -> None:
    """Duplicate names, no parts, an unknown gate or a non-judge are rejected."""
    with pytest.raises(ValueError, match="unique"):
        Rewarder([RewardSpec("a", length), RewardSpec("a", has_clear)])
    with pytest.raises(ValueError, match="at least one"):
        Rewarder([])
    with pytest.raises(ValueError, match="gate"):
        Rewarder([length], gate="nope")
    with pytest.raises(TypeError, match="not a judge"):
        Rewarder([length], judges=[JudgeSpec(object())])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grade_field"):
        Rewarder([length], grade_field="generated")


# ----------------------------------------------------------------------------- judges


async def test_judge_part_weight_and_feedback() -> None:
    """A judge adds its weighted score as a part and its feedback to Score.feedback."""
    async with serving() as (_, client):
        judge = LLMJudge(client, RUBRIC, name="quality")
        rewarder = Rewarder([RewardSpec("len", length, 0.1, inline=True)],
                            judges=[JudgeSpec(judge, weight=2.0)])  # fmt: skip
        score = await rewarder.score(EX, "clear wrong")
    assert score.parts == {"len": 2.0, "quality": 0.5}
    assert score.reward == pytest.approx(0.2 + 1.0)
    assert score.feedback == "quality: 1/2 on-topic words"
    assert rewarder.statistics().judges["quality"].requests == 1


async def test_malformed_judge_masks_rollout() -> None:
    """A malformed verdict makes the rollout a recorded failure, never a silent 0."""

    def judge_fn(req: SimRequest) -> str:
        return "I think it is good" if "poison" in req.prompt else gullible_judge(req)

    async with serving(judge_fn) as (_, client):
        rewarder = Rewarder([RewardSpec("len", length, inline=True)],
                            judges=[LLMJudge(client, RUBRIC)])  # fmt: skip
        scores = await rewarder.score_group(EX, ["clear", "poison pill", "clear"])
    assert scores[0].reward == scores[2].reward == 2.0
    assert math.isnan(scores[1].reward) and math.isnan(scores[1].parts["judge"])
    assert scores[1].error is not None and "OutputParseError" in scores[1].error
    assert rewarder.statistics().failures == 1


async def test_group_judge_one_call_per_group_and_failure_masks_all() -> None:
    """A group judge scores the group in one request; a bad reply masks every judged member."""
    replies = iter(['{"scores": [1]}', '{"scores": [1]}'])
    async with serving(lambda req: next(replies)) as (sim, client):
        gj = GroupJudge(client, RUBRIC, cache=False)
        rewarder = Rewarder(judges=[gj])
        ok = await rewarder.score_group(EX, ["same", "same"])  # deduped: one candidate shown
        assert sim.counters.judge_requests == 1
        assert [s.reward for s in ok] == [1.0, 1.0]
        bad = await rewarder.score_group(EX, ["a", "b", None])  # 2 shown, 1 score back
        assert sim.counters.judge_requests == 2
    assert all(math.isnan(s.reward) for s in bad)
    assert bad[0].error is not None and "group_judge" in bad[0].error
    assert bad[2].error == "generation failed"


async def test_identical_completions_judged_once() -> None:
    """Identical completions of a group cost one judge request each."""
    async with serving() as (sim, client):
        rewarder = Rewarder(judges=[LLMJudge(client, RUBRIC, cache=False)])
        scores = await rewarder.score_group(EX, ["clear", "clear", "wrong", "clear"])
        assert sim.counters.judge_requests == 2
    assert [s.reward for s in scores] == [1.0, 1.0, 0.0, 1.0]
    assert rewarder.statistics().judges["judge"].deduped == 2


# ----------------------------------------------------------------------------- formats


async def test_format_failures_get_the_configured_reward() -> None:
    """Unparseable outputs get format_failure_reward; nothing is called for them."""
    calls: list[str] = []

    def counted(example: Example, text: str) -> float:
        calls.append(text)
        return 1.0

    async with serving() as (sim, client):
        rewarder = Rewarder(
            [RewardSpec("c", counted, inline=True)],
            judges=[LLMJudge(client, RUBRIC)],
            signature={"output": {"generated": "string", "quality": "number"}},
            grade_field="generated",
            format_failure_reward=-1.0,
        )
        bad = Prediction({}, False, "garbage", "no output fields found")
        scores = await rewarder.score_group(
            EX, [bad, '{"generated": "clear", "quality": 1}', "not json", None]
        )
        assert sim.counters.judge_requests == 1
    assert [s.reward for s in scores[:3]] == [-1.0, 2.0, -1.0]
    assert scores[0].error is None and scores[0].feedback == "format: no output fields found"
    assert scores[2].feedback is not None and scores[2].feedback.startswith("format: ")
    assert calls == ["clear"]  # the graded field, only for the parsed output
    assert rewarder.statistics().format_failures == 2


# ----------------------------------------------------------------------------- the gate


async def test_gate_all_fail_calls_no_judge() -> None:
    """When every member fails the gate, no judge is called and the calls are counted saved."""
    async with serving() as (sim, client):
        rewarder = Rewarder(
            [RewardSpec("fmt", has_clear, inline=True), RewardSpec("len", length, 0.1, True)],
            judges=[LLMJudge(client, RUBRIC),
                    GroupJudge(client, RUBRIC)],
            gate="fmt",
        )  # fmt: skip
        scores = await rewarder.score_group(EX, ["wrong", "bad answer", "no", "nope nope"])
        assert sim.counters.judge_requests == 0
    assert [s.reward for s in scores] == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert all("judges skipped: gate 'fmt' = 0" in (s.feedback or "") for s in scores)
    s = rewarder.statistics()
    assert (s.gated, s.judge_calls_saved, s.judge_verdicts) == (4, 8, 0)


async def test_gate_is_per_rollout_and_exact() -> None:
    """Members that pass the gate are judged; the others get the functions' part alone."""
    async with serving() as (sim, client):
        rewarder = Rewarder(
            [RewardSpec("fmt", has_clear, inline=True)],
            judges=[LLMJudge(client, RUBRIC, cache=False)],
            gate="fmt",
        )
        texts = ["clear", "wrong", "clear wrong", "nothing"]
        scores = await rewarder.score_group(EX, texts)
        assert sim.counters.judge_requests == 2
        # the same output gets the same reward whatever its group mates are
        alone = [await rewarder.score(EX, t) for t in texts]
    assert [s.reward for s in scores] == [2.0, 0.0, 1.5, 0.0]
    assert [s.reward for s in alone] == [s.reward for s in scores]
    assert "judge" not in scores[1].parts
    assert rewarder.statistics().judge_calls_saved == 4


async def test_failed_function_skips_judges() -> None:
    """A rollout whose function failed is NaN anyway, so no judge is asked about it."""

    def fails_on_x(example: Example, text: str) -> float:
        if "x" in text:
            raise ValueError("x")
        return 0.0

    async with serving() as (sim, client):
        rewarder = Rewarder([RewardSpec("f", fails_on_x, inline=True)],
                            judges=[LLMJudge(client, RUBRIC)])  # fmt: skip
        scores = await rewarder.score_group(EX, ["x marks", "clear"])
        assert sim.counters.judge_requests == 1
    assert math.isnan(scores[0].reward) and scores[1].reward == 1.0
    assert rewarder.statistics().judge_calls_saved == 1


def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns a frozen snapshot that later scoring does not change."""
    rewarder = Rewarder([length])
    s = rewarder.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.groups = 5  # type: ignore[misc]
    assert s.groups == 0 and s.judges == {}


async def test_judge_events_carry_each_outputs_index_in_its_group(tmp_path: Path) -> None:
    """A per-rollout judge's request events name the group and the output's index in it:
    given indices (the rollout stage scores members 4 and 6 of a group), else positions."""
    events = EventLog(tmp_path / "events.jsonl")
    async with SimServer(SimConfig()) as sim:
        client = Client(
            EndpointConfig(base_url=sim.base_url, model="judge", timeout=5.0), events=events
        )
        async with client:
            rewarder = Rewarder(judges=[LLMJudge(client, RUBRIC, cache=False)])
            await rewarder.score_group(EX, ["clear", "wrong"], group_id="g1", sample_indices=[4, 6])
            await rewarder.score_group(EX, ["x", None, "clear"], group_id="g2")
            with pytest.raises(ValueError, match="sample_indices"):
                await rewarder.score_group(EX, ["a", "b"], sample_indices=[1])
    events.close()
    seen = sorted(
        (e["group_id"], e["sample_index"]) for e in read_records(tmp_path / "events.jsonl")
        if e.get("kind") == "judge"
    )  # fmt: skip
    assert seen == [("g1", 4), ("g1", 6), ("g2", 0), ("g2", 2)]


async def test_a_judge_without_sample_indices_still_works() -> None:
    """A judge of one's own whose ``verdicts`` takes no ``sample_indices`` is called without."""

    class Plain:
        name = "plain"
        per_group = False

        async def verdicts(
            self, example: Example, texts: list[str], *, group_id: str | None = None
        ) -> list[Verdict]:
            return [Verdict(1.0 if "clear" in t else 0.0, "", "") for t in texts]

        def stats(self) -> Any:
            raise AssertionError("not called by score_group")

    rewarder = Rewarder(judges=[JudgeSpec(Plain())])
    scores = await rewarder.score_group(EX, ["clear", "no"], sample_indices=[3, 5])
    assert [s.reward for s in scores] == [1.0, 0.0]
