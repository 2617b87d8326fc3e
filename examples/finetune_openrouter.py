"""The spec's walkthrough, for real: "fine-tune" a hosted model on OpenRouter with GRPO.

    export OPENROUTER_API_KEY=...
    export OPENROUTER_MODEL=openai/gpt-4o-mini    # optional (the spec's default otherwise)
    python examples/finetune_openrouter.py

What happens, in the spec's terms:

1. Base model setup: ``base_prompt`` is the spec's ``promptTemplate``
   ("Generate high-quality text based on: {text}").
2. Reward: ``reward_prompt`` is the spec's ``rewardPrompt``: an LLM judge on the same
   endpoint grades each output 0-1 with feedback; a length penalty keeps answers short.
3. Policy optimization: the weights of a hosted model are out of reach, so GRPO trains a
   distribution over prompt candidates (the base template, instructions the model proposes by
   reflecting on its best and worst outputs and on the judge's feedback, and few-shot demo sets
   built from its best outputs). Groups of 4 outputs per topic give the group-relative
   advantages; the clipped ratio, KL and entropy act on the candidate logits.
4. Progress: ``on_batch_complete`` gets each step's metrics. GRPO has no value function, so
   there is no value loss to report (``value_loss`` is None, never a fake 0).
5. The result generates with the best prompt, is saved as a checkpoint, and loads again.

About 6 steps x 4 topics x 4 outputs = 96 generations plus their judge calls (cached and
deduplicated). ``OPENROUTER_BASE_URL`` points the script elsewhere (a proxy, or the simulated
server: ``python -m engine serve-sim --port 8000``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from engine.rewards.functions import length_penalty
from engine.training.finetune import FineTunedModel, finetune
from engine.training.trainer import BatchMetrics

TRAINING_DATA = [
    {"input": {"text": topic}, "output": {"generated": reference, "quality": 0.9}}
    for topic, reference in [
        ("Explain quantum computing", "Quantum computers use qubits, which can be 0 and 1 at "
         "once, to explore many answers in parallel for some problems."),
        ("Explain photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar "
         "and oxygen in their leaves."),
        ("Explain inflation", "Inflation is the rise of prices over time, so the same money "
         "buys less."),
        ("Explain how vaccines work", "Vaccines show the immune system a harmless piece of a "
         "germ so it learns to fight the real one."),
        ("Explain black holes", "A black hole is a region where gravity is so strong that not "
         "even light escapes."),
        ("Explain machine learning", "Machine learning fits a model to examples so that it can "
         "predict answers for new cases."),
        ("Explain the water cycle", "Water evaporates, forms clouds, falls as rain or snow and "
         "flows back to the sea."),
        ("Explain blockchain", "A blockchain is a shared ledger where each block of records is "
         "linked to the previous one by a hash."),
    ]
]  # fmt: skip

REWARD_PROMPT = """Evaluate the quality of the generated text for the given topic.
Reward accurate, clear explanations a curious teenager would understand, in at most three
sentences. Penalize errors, jargon left unexplained, and padding.
Provide: 1. a quality score from 0 to 1; 2. specific feedback."""


def on_batch(m: BatchMetrics) -> None:
    """The spec's progress callback (value loss: GRPO has none)."""
    print(
        f"Batch {m.batch_id}: average reward {m.avg_reward:.3f}, policy loss "
        f"{m.policy_loss:.4f}, value loss {m.value_loss} (GRPO has no value function), "
        f"candidates {m.all.get('prompt/candidates', 0):.0f}",
        flush=True,
    )


async def main() -> int:
    if not os.environ.get("OPENROUTER_API_KEY"):
        print("set OPENROUTER_API_KEY (and optionally OPENROUTER_MODEL)", file=sys.stderr)
        return 2
    endpoint = {
        "provider": "openrouter",
        "base_url": os.environ.get("OPENROUTER_BASE_URL", ""),
        "mode": "chat",
        "max_tokens": 160,
    }
    model = await finetune(
        TRAINING_DATA,
        base_prompt="Generate high-quality text based on: {text}",
        reward=[length_penalty],
        reward_prompt=REWARD_PROMPT,
        optimizer={
            "learningRate": 0.3,  # on candidate logits (the spec's 0.001 would barely move them)
            "epochs": 2,
            "clipEpsilon": 0.2,
            "miniBatchSize": 2,
            "entropyCoef": 0.01,
            "steps": 6,
        },
        prompt={"max_candidates": 8, "max_demos": 2, "propose_every": 2},  # reflection
        endpoint=endpoint,
        out="runs/finetune-openrouter",
        overwrite=True,  # replace the previous run of this example
        on_batch_complete=on_batch,
    )
    async with model:
        s = model.summary
        print(f"\nheld-out reward before {s.eval_before} -> after {s.eval_after}")
        print("\ncandidates (probability, mean training reward, origin, instruction):")
        for c in model.candidates:
            print(
                f"  {c.probability:.2f}  {c.mean_reward:.2f}  {c.origin:10s} "
                f"{c.instruction[:70]!r} demos={len(c.demos)}"
            )
        print(f"\nbest prompt:\n{model.best_prompt}\n")
        result = await model.generate("Explain how the internet works")
        print(f"generate('Explain how the internet works'):\n{result}\n")
        path = model.save("runs/finetune-openrouter/model")
        print(f"saved to {path}")
    async with FineTunedModel.load(path, endpoint=endpoint) as again:  # the endpoint is ours
        print("reloaded; best prompt unchanged:", again.best_prompt == model.best_prompt)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
