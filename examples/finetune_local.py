"""finetune() against a local llama.cpp server with Gemma 3 270M (a base model), no API key.

    python scripts/llama_server.py --port 8080 &       # prints http://127.0.0.1:8080/v1
    python examples/finetune_local.py                  # LLAMA_BASE_URL overrides the URL

The task is the built-in ``sentiment`` dataset: label a one-sentence review ``positive`` or
``negative``. Gemma 3 270M is a base model, so it runs in completions mode, and zero-shot it
continues the review instead of labelling it; given a few balanced demonstrations it labels
most reviews right. The run starts from the bare base prompt, learns from rewards alone which
of its candidates (2 instructions x zero-shot and 2 demo sets) earn reward, and prints the
held-out accuracy before and after. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import sys

from engine.data import datasets
from engine.data.sampler import is_heldout
from engine.training.finetune import finetune

BASE_URL = os.environ.get("LLAMA_BASE_URL", "http://127.0.0.1:8080/v1")


async def main() -> int:
    examples = datasets.load("sentiment")
    heldout = [e for e in examples if is_heldout(e, 0.25, 0)][:24]
    train = [e for e in examples if e not in heldout]
    model = await finetune(
        train,
        base_prompt="Classify the sentiment of this review.",
        instructions=["Is this review positive or negative? Answer with one word."],
        optimizer={"learning_rate": 0.3, "steps": 6, "group_size": 4, "mini_batch_size": 2},
        endpoint={
            "provider": "local",
            "base_url": BASE_URL,
            "model": "gemma-3-270m",
            "mode": "completions",
            "max_tokens": 3,
            "timeout": 120.0,
        },
        eval_data=heldout,
        on_batch_complete=lambda m: print(
            f"step {m.batch_id + 1}: reward {m.avg_reward:.3f}  entropy {m.entropy:.3f}", flush=True
        ),
    )
    async with model:
        s = model.summary
        print(f"\nheld-out accuracy (greedy): {s.eval_before:.3f} -> {s.eval_after:.3f}")
        print("\ncandidates:")
        for c in model.candidates:
            print(f"  p={c.probability:.2f}  demos={len(c.demos)}  {c.instruction!r}")
        for text in ("The waiter forgot our order twice.", "A gorgeous, moving film."):
            print(f"\n{text!r} -> {await model.generate(text)!r}")
        print(f"\nsaved to {model.save('runs/finetune-local/model')}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
