"""Generators and inputs from a run's files: held-out splits, bad specs, TOML configs and
prompt-policy checkpoints on the simulated server."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.errors import CheckpointError, ConfigError
from engine.evaluation.compare import ModelComparator, heldout_examples, load_generator
from engine.policies.prompt import PromptPolicy
from engine.types import Example
from tests.evaluation.runs import good_share


def test_heldout_examples_follow_the_trainer_split(tmp_path: Path) -> None:
    """Held-out inputs: the task split (tinylm), the sentiment split (prompt), data.eval."""
    from engine.data.sampler import is_heldout

    tiny = load_config(None, ["data.num_examples=300"])
    held = heldout_examples(tiny)
    assert held and all(is_heldout(ex, tiny.data.eval_fraction, tiny.seed) for ex in held)
    assert len(heldout_examples(tiny, limit=5)) == 5
    prompt_cfg = load_config(None, ["policy='prompt'"])
    held = heldout_examples(prompt_cfg)
    assert held and all(ex.target in ("positive", "negative") for ex in held)
    data = tmp_path / "eval.jsonl"
    data.write_bytes(b'{"prompt": "q1"}\n{"prompt": "q2"}\n')
    assert [ex.text for ex in heldout_examples(load_config(None, [f"data.eval='{data}'"]))] == [
        "q1",
        "q2",
    ]


async def test_load_generator_errors(tmp_path: Path) -> None:
    """Specs that are neither checkpoint, run dir nor config fail with a clear error."""
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        await load_generator(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        await load_generator(tmp_path)


async def test_endpoint_config_spec_against_sim(tmp_path: Path) -> None:
    """A TOML spec is a fixed prompt on its endpoint (here the simulated server)."""
    from engine.testing.sim import SimConfig, SimServer

    async with SimServer(SimConfig(latency=0.0)) as sim:
        base = tmp_path / "base.toml"
        base.write_text(f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n')
        tuned = tmp_path / "tuned.toml"
        tuned.write_text(
            f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
            '[prompt]\ninstructions = ["Write about gradient policy reward."]\n'
        )
        a, b = await load_generator(base), await load_generator(tuned)
        try:
            exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(12)]
            result = await ModelComparator(
                a, b, exs, ["relevance", "diversity"], samples_per_input=3, seed=1
            ).compare()
        finally:
            await a.aclose()
            await b.aclose()
    assert a.render(exs[0]) == "question 0"  # no instruction: the input alone
    assert b.render(exs[0]) == [  # the prompt policy's base prompt, chat mode
        {"role": "system", "content": "Write about gradient policy reward."},
        {"role": "user", "content": "question 0"},
    ]
    assert result.metrics["relevance"].n == 12 and not result.failures
    assert sim.statistics().requests >= 24


async def test_prompt_policy_checkpoint_against_sim(tmp_path: Path) -> None:
    """A prompt-policy checkpoint loads on its endpoint; '#ref' is its initial distribution."""
    # B's logits favour an instruction full of words the simulated model then prefers, so B's
    # answers use more of them than A's (the uniform initial distribution).
    from engine.config.loading import to_dict
    from engine.endpoints.client import Client
    from engine.learning.checkpoint import save_checkpoint
    from engine.testing.sim import SimConfig, SimServer

    async with SimServer(SimConfig(latency=0.0)) as sim:
        cfg = load_config(
            None,
            [
                "policy='prompt'",
                f"endpoint.base_url='{sim.base_url}'",
                "endpoint.model='sim'",
                "prompt.instructions=['Answer.', 'Be accurate clear concise correct helpful.']",
            ],
        )
        async with Client(cfg.endpoint) as client:
            policy = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint)
            policy.parameters()["logits"][1] = 8.0  # nearly always the second instruction
            arrays, meta = policy.state()
        save_checkpoint(
            tmp_path / "checkpoints" / "step-3",
            {f"policy/{k}": v for k, v in arrays.items()},
            {"policy": meta, "config": to_dict(cfg), "step": 3},
        )
        here = [f"endpoint.base_url='{sim.base_url}'"]  # the user names the endpoint
        a = await load_generator(f"{tmp_path}#ref", overrides=here)
        b = await load_generator(tmp_path, trust_saved_config=True)  # or trusts the saved one
        try:
            exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(16)]
            result = await ModelComparator(
                a, b, exs, [("good_words", good_share)], samples_per_input=4
            ).compare()
        finally:
            await a.aclose()
            await b.aclose()
    assert a.name.endswith("(step 0)") and b.name.endswith("(step 3)")
    m = result.metrics["good_words"]
    assert not result.failures and m.diff > 0 and m.p_value < 0.05, str(result)
