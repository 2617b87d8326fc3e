"""Models as generators: a text model, a live policy and a FineTunedModel compare directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config.loading import load_config
from engine.data.tasks import reward as task_reward
from engine.evaluation.compare import (
    ModelComparator,
    PolicyGenerator,
    TextModelGenerator,
    load_generator,
)
from engine.policies.prompt import PromptPolicy
from engine.training.finetune import FineTunedModel
from engine.types import Example
from tests.evaluation.runs import good_share, word_examples


async def test_text_model_adapter_passes_seed_and_sample() -> None:
    """An object with async generate(text, sample=, seed=) is wrapped: n calls, seeds seed+i."""

    class Model:
        def __init__(self) -> None:
            self.kwargs: list[dict[str, Any]] = []

        async def generate(self, text: str, *, sample: bool = False, seed: int = 0) -> Any:
            self.kwargs.append({"sample": sample, "seed": seed})
            return {"generated": f"{text}/{seed}"}

    m = Model()
    gen = TextModelGenerator(m, name="ft")
    out = await gen.generate(Example(id="x", text="hi"), 3, 10)
    assert out == ["hi/10", "hi/11", "hi/12"]
    assert sorted(k["seed"] for k in m.kwargs) == [10, 11, 12] and all(
        k["sample"] for k in m.kwargs
    )
    result = await ModelComparator(
        m, gen, word_examples(3), ["relevance"], samples_per_input=2
    ).compare()
    assert result.model_a == "Model" and result.model_b == "ft"


async def test_policy_adapter_wraps_a_live_policy() -> None:
    """An engine policy object is compared directly (its current parameters)."""
    from engine.config.sections import TinyLMConfig
    from engine.data.tasks import make_examples
    from engine.policies.tinylm import TinyLM

    cfg = TinyLMConfig()
    pol = TinyLM(cfg, seed=0)
    exs = make_examples(cfg, 8, seed=0)
    result = await ModelComparator(
        pol,
        PolicyGenerator(pol, name="same"),
        exs,
        ["quality"],
        samples_per_input=2,
        quality=task_reward,
    ).compare()
    assert result.metrics["quality"].diff == 0.0


async def test_finetuned_model_adapter_against_sim(tmp_path: Path) -> None:
    """A FineTunedModel (async generate(text, sample=, seed=)) compares as a Generator."""
    from engine.endpoints.client import Client
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
        client = Client(cfg.endpoint)
        policy = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint)
        policy.parameters()["logits"][1] = 8.0
        async with FineTunedModel(policy, cfg, clients=[client]) as model:
            toml = tmp_path / "base.toml"
            toml.write_text(
                f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
                '[prompt]\ninstructions = ["Answer."]\n'
            )
            base = await load_generator(toml)
            try:
                exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(16)]
                result = await ModelComparator(
                    base, model, exs, [("good_words", good_share)], samples_per_input=3
                ).compare()
            finally:
                await base.aclose()
    assert result.model_b == "FineTunedModel" and not result.failures
    m = result.metrics["good_words"]
    assert m.diff > 0 and m.p_value < 0.05, str(result)
