"""Group export for weight trainers: record shape, TRL compatibility, resume, trainer and CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.config.loading import load_config
from engine.errors import DataError
from engine.policies.prompt import PromptSample
from engine.telemetry.export import (
    FORMAT,
    GroupExporter,
    flatten,
    group_record,
    preference_pairs,
    read_groups,
)
from engine.training.trainer import TrainingManager
from engine.types import Example, Group, Rollout, Sample, Usage

# Column names TRL's GRPOTrainer passes to reward functions itself: a dataset column with one of
# these names would collide with them (TypeError: multiple values for keyword argument).
TRL_RESERVED = {"prompts", "completions", "completion_ids", "trainer_state"}


def token_group(step: int = 0) -> Group:
    """A group of a token-level policy: one prompt, token ids and logprobs per completion."""
    g = Group(f"{step}-0", step, Example("e1", "1 2 3", target="3 2 1"), policy_version=step)
    for i, (text, reward) in enumerate([("3 2 1", 1.0), ("1 2 3", 0.0), ("", math.nan)]):
        s = Sample(
            text=text,
            prompt="1 2 3",
            token_ids=np.array([3, 2, 1]),
            logprobs=np.array([-0.1, -0.2, -0.3]),
            prompt_ids=np.array([9, 1, 2, 3]),
            usage=Usage(4, 3),
            error="timeout" if not text else None,
        )
        r = Rollout(g.group_id, i, step, s, reward=reward, reward_parts={"exact": reward})
        r.advantage = [0.7, -0.7, math.nan][i]
        g.rollouts.append(r)
    return g


def prompt_group() -> Group:
    """A group of the prompt policy: members drew different prompts (candidates)."""
    g = Group("0-1", 0, Example("e2", "great film", target="positive"), policy_version=0)
    for i, (prompt, text, reward) in enumerate(
        [("A\nOutput:", " negative", 0.0), ("B\nOutput:", " positive", 1.0)]
    ):
        s = PromptSample(
            text=text,
            prompt=prompt,
            choice=10 + i,
            logprobs=np.array([-0.5 - i]),
            completion_logprobs=np.array([-0.05, -1.0]),
            completion_tokens=(text, "\n\n"),
        )
        r = Rollout(g.group_id, i, 0, s, reward=reward, feedback="judge: ok" if i else None)
        r.advantage = reward - 0.5
        g.rollouts.append(r)
    return g


def test_token_policy_record() -> None:
    """One line per group: prompt, per-sample completions, token ids, logprobs, NaN as null."""
    rec = orjson.loads(orjson.dumps(group_record(token_group(3))))
    assert rec["format"] == FORMAT and rec["prompt"] == "1 2 3"
    assert (rec["step"], rec["policy_version"], rec["group_id"]) == (3, 3, "3-0")
    assert (rec["input"], rec["target"], rec["example_id"]) == ("1 2 3", "3 2 1", "e1")
    assert rec["rewards"] == [1.0, 0.0, None] and rec["advantages"] == [0.7, -0.7, None]
    s0 = rec["samples"][0]
    assert s0["completion"] == "3 2 1" and s0["completion_token_ids"] == [3, 2, 1]
    assert s0["completion_logprobs"] == [-0.1, -0.2, -0.3]
    assert s0["prompt_token_ids"] == [9, 1, 2, 3]
    assert s0["choice"] is None and s0["choice_logprob"] is None
    assert rec["samples"][2]["error"] == "timeout"
    assert not TRL_RESERVED & set(rec)


def test_prompt_policy_record_keeps_choice_and_completion_logprobs_apart() -> None:
    """The candidate's log-probability and the completion's token logprobs are separate fields;
    with differing prompts, ``prompt`` is the best-rewarded member's."""
    rec = group_record(prompt_group())
    assert rec["prompt"] == "B\nOutput:"
    s1 = rec["samples"][1]
    assert (s1["choice"], s1["choice_logprob"]) == (11, -1.5)
    assert s1["completion_logprobs"] == [-0.05, -1.0]
    assert s1["completion_tokens"] == [" positive", "\n\n"] and s1["completion_token_ids"] is None
    assert s1["feedback"] == "judge: ok"


def test_chat_prompts_are_trl_conversational() -> None:
    """In chat mode the prompt is a list of role/content messages (TRL's conversational type)."""
    g = prompt_group()
    msgs = ({"role": "system", "content": "Label."}, {"role": "user", "content": "great film"})
    for r in g.rollouts:
        r.sample.messages = msgs  # type: ignore[attr-defined]
    rec = group_record(g)
    assert rec["prompt"] == list(msgs) and all(s["prompt"] == list(msgs) for s in rec["samples"])


def test_flatten_and_preference_pairs() -> None:
    """Prompt-completion rows skip failed samples; pairs are best vs worst with a margin."""
    recs = [group_record(token_group()), group_record(prompt_group())]
    rows = list(flatten(recs))
    assert len(rows) == 4 and all(r["reward"] is not None for r in rows)
    assert set(rows[0]) == {"prompt", "completion", "reward", "advantage", "group_id", "step"}
    pairs = list(preference_pairs(recs))
    assert pairs[0] == {
        "prompt": "1 2 3", "chosen": "3 2 1", "rejected": "1 2 3", "group_id": "0-0"
    }  # fmt: skip
    assert pairs[1]["prompt"] == "B\nOutput:" and pairs[1]["chosen"] == " positive"
    assert list(preference_pairs(recs, min_margin=1.0)) == []


def test_exporter_appends_and_a_resumed_run_replaces_its_steps(tmp_path: Path) -> None:
    """A new exporter drops lines at or after the first step it writes: no duplicate steps."""
    path = tmp_path / "out" / "groups.jsonl"
    with GroupExporter(path) as ex:
        for step in range(4):
            assert ex.write([token_group(step), token_group(step)], step=step) == 2
    assert [r["step"] for r in read_groups(path)] == [0, 0, 1, 1, 2, 2, 3, 3]
    with GroupExporter(path) as ex:  # resumed at step 2
        ex.write([token_group(2)], step=2)
    assert [r["step"] for r in read_groups(path)] == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="closed"):
        ex.write([token_group(5)])
    path.write_bytes(path.read_bytes() + b"not json\n")
    with pytest.raises(DataError, match=":6"):
        list(read_groups(path))


async def test_trainer_exports_every_group_with_advantages(tmp_path: Path) -> None:
    """TrainingManager(export_groups=...) writes batch_size lines per step, advantages set."""
    cfg = load_config(
        None,
        ["steps=3", "data.batch_size=4", "grpo.group_size=4", "data.num_examples=100",
         "trainer.eval_every=0", "trainer.checkpoint_every=0"],
    )  # fmt: skip
    async with TrainingManager(cfg, out=None, export_groups=tmp_path / "g.jsonl") as tm:
        await tm.run()
    recs = list(read_groups(tmp_path / "g.jsonl"))
    assert [r["step"] for r in recs] == [0] * 4 + [1] * 4 + [2] * 4
    for r in recs:
        assert len(r["samples"]) == 4 and len(r["rewards"]) == 4
        adv = [a for a in r["advantages"] if a is not None]
        assert adv and abs(sum(adv)) < 1e-6  # group-relative: centred within the group
        assert all(s["completion_token_ids"] is not None for s in r["samples"])


def test_cli_export_groups(tmp_path: Path) -> None:
    """``python -m engine run --export-groups FILE`` writes the file beside the run."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--steps", "2", "--out", str(out), "--quiet",
         "--export-groups", str(out / "groups.jsonl"), "--set", "data.batch_size=4",
         "--set", "grpo.group_size=4", "--set", "data.num_examples=100",
         "--set", "trainer.eval_size=4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recs = list(read_groups(out / "groups.jsonl"))
    assert len(recs) == 2 * 4 and {r["step"] for r in recs} == {0, 1}
