"""Calculator episodes on a real model: Gemma 3 270M on llama.cpp, completions mode, the text
tool protocol, every turn through the endpoint client (``examples/calculator.toml``).

The assertions are on structure, not on the model being smart: every episode runs to its
answer or a limit without failing, every turn is one request whose events carry the episode
and the turn, a turn the episode went on after made calls and got one result per call, and
the reward is the calculator task's 0 or 1. Measured before the test was written: greedy,
the candidate with two tool-call demonstrations makes one call per episode and then answers
(2 of the first 3 problems right); the zero-shot candidate answers a number at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config.loading import load_config
from engine.data import datasets
from engine.endpoints.client import Client
from engine.environments.runner import EpisodeRunner, episode_score
from engine.policies.prompt import PromptPolicy
from engine.telemetry.events import EventLog
from engine.types import Sample

pytestmark = pytest.mark.llama

ROOT = Path(__file__).resolve().parents[2]


async def test_calculator_episodes_with_the_text_protocol(
    llama_base_url: str, llama_model: str
) -> None:
    cfg = load_config(
        ROOT / "examples" / "calculator.toml",
        [
            f"endpoint.base_url='{llama_base_url}'",
            f"endpoint.model='{llama_model}'",
            "endpoint.max_tokens=40",
            "environment.max_turns=3",
        ],
    )
    examples = datasets.load("calculator")[:3]
    events = EventLog(None)
    seen: list[dict[str, Any]] = []
    events.subscribe(lambda e: seen.append(dict(e)))
    runner = EpisodeRunner.from_config(cfg, events=events)
    assert runner is not None
    async with Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry, events=events) as client:
        demo = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint,
                            instructions=cfg.prompt.instructions[1:])  # fmt: skip
        sampled = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint, seed=cfg.seed)
        greedy: list[Sample] = []
        drawn: list[Sample] = []
        for i, ex in enumerate(examples):
            rng = np.random.default_rng([cfg.seed, i])
            greedy += await runner.generate(demo, demo.snapshot(0), ex, 1, rng, greedy=True)
            if i < 2:
                drawn += await runner.generate(sampled, sampled.snapshot(0), ex, 2, rng)
    samples = greedy + drawn
    requests = [e for e in seen if e.get("kind") == "generation"]
    for s in samples:
        record = s.episode
        assert record is not None
        assert s.error is None and record.error is None, s.error
        assert record.ended in ("done", "max_turns", "max_tokens")
        assert 1 <= len(record.turns) <= 3
        assert episode_score(s).reward in (0.0, 1.0)
        turns = sorted(e["turn"] for e in requests if e.get("episode") == record.id)
        assert turns == list(range(len(record.turns)))  # one request per turn, no retries
        for turn in record.turns[:-1]:  # a turn the episode went on after made calls
            assert turn.tool_calls and len(turn.tool_results) == len(turn.tool_calls)
            assert all(r.error is None or r.content.startswith("error:") for r in turn.tool_results)
    calls = sum(s.episode.tool_calls for s in samples if s.episode is not None)
    rewards = [episode_score(s).reward for s in samples]
    print(f"\ncalculator episodes on {llama_model}: {calls} tool calls, rewards {rewards}")
