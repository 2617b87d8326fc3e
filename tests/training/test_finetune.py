"""finetune() (the spec's createFineTunedModel) against the simulated server; save, load, eval."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli.eval import eval_command
from engine.cli.main import build_parser
from engine.config.sections import GRPOConfig, PromptPolicyConfig
from engine.errors import CheckpointError, ConfigError, DataError
from engine.learning.checkpoint import save_checkpoint
from engine.telemetry.export import read_groups
from engine.testing.sim import SimConfig, SimRequest, SimServer
from engine.training.finetune import FineTunedModel, finetune, finetune_config, load_examples
from engine.types import Example

TRAIN = [
    {"input": {"text": f"item {i}"}, "output": {"generated": "even" if i % 2 == 0 else "odd"}}
    for i in range(80)
]
TRUTH = {f"item {i}": "even" if i % 2 == 0 else "odd" for i in range(200)}


def scripted(req: SimRequest) -> str:
    """Right 90% of the time under a GOOD instruction, 10% otherwise (greedy: right iff GOOD)."""
    x = req.prompt.rsplit("Input:", 1)[-1].split("\n", 1)[0].strip()
    truth = TRUTH.get(x, "even")
    q = 0.9 if "GOOD" in req.prompt else 0.1
    if req.temperature == 0:
        return truth if q > 0.5 else "maybe"
    return truth if random.Random(f"{req.seed}:{req.index}:{req.prompt}").random() < q else "maybe"


def judge(req: SimRequest) -> str:
    """A scripted judge: a constant verdict with feedback."""
    return '{"score": 0.5, "feedback": "plausible"}'


def endpoint(sim: SimServer) -> dict[str, Any]:
    return {"base_url": sim.base_url, "model": "sim", "mode": "completions", "max_tokens": 4}


OPT = {"learningRate": 0.3, "steps": 8, "miniBatchSize": 2, "max_staleness": 1}


async def test_finetune_end_to_end(tmp_path: Path) -> None:
    """finetune() trains, the model answers with its best prompt, and the run writes files."""
    seen: list[Any] = []
    async with SimServer(SimConfig(model=scripted)) as sim:
        model = await finetune(
            TRAIN,
            base_prompt="Answer.",
            instructions=["GOOD: say even or odd."],
            optimizer=OPT,
            endpoint=endpoint(sim),
            out=tmp_path / "run",
            on_batch_complete=seen.append,
        )
        async with model:
            assert model.summary.eval_before == 0.0 and model.summary.eval_after >= 0.9
            assert model.best_candidate.instruction.startswith("GOOD")
            assert await model.generate("item 3") == "odd"
            assert await model.generate({"text": "item 8"}) == "even"  # the spec's input shape
            assert await model.generate("item 5", sample=True, seed=1) in {"odd", "maybe"}
            assert model.best_prompt.endswith("Input: {text}\nOutput:")
            probs = [c.probability for c in model.candidates]
            assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
            assert model.candidates[0].rollouts > 0
            result = await model.evaluate([Example("t", "item 101", target="odd")])
            assert result.mean_reward == 1.0 and result.errors == 0
            assert "GOOD" in repr(model)
    assert len(seen) == 8 and all(m.value_loss is None for m in seen)
    assert len(model.history) == 8
    for name in ("metrics.jsonl", "events.jsonl", "summary.json"):
        assert (tmp_path / "run" / name).exists(), name


async def test_save_load_and_eval_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved model loads with the same candidates and answers; eval --checkpoint reads it."""
    async with SimServer(SimConfig(model=scripted)) as sim:
        async with await finetune(
            TRAIN,
            base_prompt="Answer.",
            instructions=["GOOD: say even or odd."],
            optimizer=OPT,
            endpoint=endpoint(sim),
        ) as model:
            model.save(tmp_path / "model")
            answer = await model.generate("item 7")
            before = [(c.id, c.instruction, c.probability) for c in model.candidates]
        async with FineTunedModel.load(
            tmp_path / "model", endpoint={"base_url": sim.base_url}
        ) as loaded:
            assert [(c.id, c.instruction, c.probability) for c in loaded.candidates] == before
            assert await loaded.generate("item 7") == answer
            assert loaded.best_prompt == model.best_prompt and loaded.summary is None
        data = tmp_path / "heldout.jsonl"
        data.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in TRAIN[:10]))
        args = build_parser().parse_args(
            ["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(data), "--json",
             "--quiet", "--set", f"endpoint.base_url='{sim.base_url}'",
             "--out", str(tmp_path / "rows.jsonl")]
        )  # fmt: skip
        assert await eval_command(args) == 0
    out = capsys.readouterr().out
    summary = orjson.loads(out[out.index("{\n") :])  # after any log lines another test enabled
    assert summary["n"] == 10 and summary["mean_reward"] == 1.0 and summary["pass_rate"] == 1.0
    assert summary["errors"] == 0 and summary["requests"] == 10
    rows = [orjson.loads(x) for x in (tmp_path / "rows.jsonl").read_bytes().splitlines()]
    assert len(rows) == 10 and all(r["reward"] == 1.0 for r in rows)


def test_load_refuses_other_checkpoints(tmp_path: Path) -> None:
    """Loading a checkpoint of another policy is a CheckpointError, not a confusing crash."""
    save_checkpoint(tmp_path / "tiny", {}, {"config": {"policy": "tinylm"}, "policy": {}})
    with pytest.raises(CheckpointError, match="not a prompt policy"):
        FineTunedModel.load(tmp_path / "tiny")
    with pytest.raises(CheckpointError):
        FineTunedModel.load(tmp_path / "nothing-here")


async def test_reward_prompt_adds_a_judge(tmp_path: Path) -> None:
    """reward_prompt (the spec's rewardPrompt) grades with an LLM judge beside the functions."""
    async with (
        SimServer(SimConfig(model=scripted, judge=judge)) as sim,
        await finetune(
            TRAIN[:40],
            base_prompt="GOOD: answer.",
            reward=lambda ex, text: float(text.strip() == ex.target),
            reward_prompt="Is the label right?",
            optimizer={"steps": 2},
            endpoint=endpoint(sim),
            export_groups=tmp_path / "groups.jsonl",
        ) as model,
    ):
        assert len(model.history) == 2
    sample = next(read_groups(tmp_path / "groups.jsonl"))["samples"][0]
    assert sample["reward_parts"]["judge"] == 0.5
    assert sample["feedback"] == "judge: plausible"


async def test_custom_async_reward_and_rewarder_conflict() -> None:
    """Async reward functions work; a Rewarder together with reward_prompt is refused."""
    from engine.rewards.rewarder import Rewarder

    async def right(ex: Example, text: str) -> float:
        return float(text.strip() == ex.target)

    async with SimServer(SimConfig(model=scripted)) as sim:
        async with await finetune(
            TRAIN[:40], base_prompt="GOOD.", reward=[right], optimizer={"steps": 2},
            endpoint=endpoint(sim),
        ) as model:  # fmt: skip
            assert model.history[-1]["reward"] > 0.5
        with pytest.raises(ValueError, match="not both"):
            await finetune(
                TRAIN[:40], base_prompt="x", reward=Rewarder([right]), reward_prompt="rubric",
                endpoint=endpoint(sim),
            )  # fmt: skip


def test_finetune_config_names_and_errors() -> None:
    """The spec's optimizer names map to config keys; bad keys and values name themselves."""
    cfg = finetune_config(
        base_prompt="base",
        instructions=["other", "base"],
        optimizer={"learningRate": 0.5, "epochs": 2, "miniBatchSize": 1, "beta": 0.0, "steps": 3},
        endpoint={"provider": "local", "base_url": "http://127.0.0.1:9/v1"},
    )
    assert cfg.policy == "prompt" and cfg.prompt.instructions == ("base", "other")
    assert (cfg.optim.lr, cfg.grpo.epochs, cfg.grpo.mini_batch_size) == (0.5, 2, 1)
    assert cfg.grpo.beta == 0.0 and cfg.steps == 3
    assert cfg.endpoint.base_url == "http://127.0.0.1:9/v1"
    p = finetune_config(base_prompt="b", prompt={"propose_every": 2, "instructions": ["x"]})
    assert p.prompt == PromptPolicyConfig(instructions=("b", "x"), propose_every=2)
    g = GRPOConfig(group_size=3, epsilon=0.1)
    assert finetune_config(base_prompt="b", optimizer=g).grpo == g
    with pytest.raises(ConfigError, match="warp"):
        finetune_config(base_prompt="b", optimizer={"warp": 9})
    with pytest.raises(ConfigError, match=r"grpo\.epsilon"):
        finetune_config(base_prompt="b", optimizer={"clipEpsilon": -1})
    with pytest.raises(ConfigError, match="base_prompt"):
        finetune_config(base_prompt="  ")


def test_load_examples_accepts_the_spec_format_and_more(tmp_path: Path) -> None:
    """TrainingExample dicts, prompt/answer dicts, Examples and JSONL paths all load."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(orjson.dumps(TRAIN[0]) + b"\n")
    exs = load_examples(
        [TRAIN[1], {"prompt": "2+2", "answer": 4}, Example("own", "hi", target="x")]
    )
    assert [(e.id, e.text, e.target) for e in exs] == [
        ("example-1", "item 1", "odd"),
        ("example-2", "2+2", "4"),
        ("own", "hi", "x"),
    ]
    assert load_examples(path)[0].target == "even"
    with pytest.raises(DataError, match="<train_data>:2"):
        load_examples([TRAIN[0], {"input": "not an object"}])
