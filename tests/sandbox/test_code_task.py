"""The built-in code task end to end: python -m engine run against the simulated server."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from engine.data import datasets
from engine.testing.sim import SimServer
from engine.testing.sim.code import canned_code, code_kind
from tests.reliability.support import REPO, run_engine


def test_the_simulated_server_answers_code_problems_with_every_kind() -> None:
    """Code-task prompts get canned code of each kind; other prompts get none."""
    ex = datasets.load("code")[3]
    kinds = Counter(code_kind(ex.text, 1.0, None, 0, n, 0) for n in range(400))
    assert set(kinds) == {"correct", "half", "stub", "prose"}
    assert 0.3 < kinds["correct"] / 400 < 0.5
    demo = datasets.load("code")[0]
    answer = canned_code(f"{demo.text}\n{demo.target}\n{ex.text}", 0.0, None, 0, 1, 0)
    assert answer is not None and f"def {ex.meta['entry_point']}" in answer
    assert canned_code("reverse: 1 2 3", 1.0, None, 0, 1, 0) is None


async def test_the_code_task_runs_against_the_simulated_server(tmp_path: Path) -> None:
    """examples/code.toml trains: rewards come from the sandbox, with variance, none NaN."""
    out = tmp_path / "run"
    async with SimServer() as sim:
        done = await run_engine(
            [
                "run",
                "--config",
                str(REPO / "examples" / "code.toml"),
                "--set",
                f'endpoint.base_url="{sim.base_url}"',
                "--set",
                f'data.train="{REPO / "engine" / "data" / "datasets" / "code.jsonl"}"',
                "--steps",
                "2",
                "--out",
                str(out),
                "--quiet",
            ],
            limit=300,
        )
    assert done.returncode == 0, done.err[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    rewards = [m["reward"] for m in metrics]
    assert all(0.0 < r < 1.0 for r in rewards), rewards  # correct, half and failing answers
    assert all(m.get("reward_std", 0.0) > 0.0 for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == 2
