"""The code environment: the python tool inside episodes, the answer scored by unit_tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config.loading import load_config
from engine.config.sections import SandboxConfig
from engine.data.jsonl import parse_example
from engine.environments.base import EpisodeRecord, TurnRecord
from engine.environments.code import CodeEnvironment
from engine.environments.python_tool import PythonTool
from engine.environments.registry import make_environment
from engine.environments.tools import run_call
from engine.errors import SandboxError
from engine.sandbox import Sandbox
from engine.testing.sim import SimConfig, SimReply, SimServer, SimToolCall, ToolScript
from engine.types import ToolCall
from tests.reliability.support import jsonl_records, run_engine

PROBLEM = {
    "id": "add",
    "prompt": "Write a Python function `add(a, b)` that returns the sum of two numbers.",
    "entry_point": "add",
    "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
    "answer": "```python\ndef add(a, b):\n    return a + b\n```",
}
CALL = ToolCall(id="c0", name="python", arguments='{"code": "print(1)"}')
SCRIPT = ToolScript(
    [
        SimReply(tool_calls=(SimToolCall("python", {"code": "print(1 + 2)"}),)),
        "```python\ndef add(a, b):\n    return a + b\n```",
    ]
)


async def test_code_episodes_run_the_tool_and_score_the_answer(tmp_path: Path) -> None:
    """Each episode calls python once, then answers; the answer passes its tests: reward 1."""
    data = tmp_path / "code.jsonl"
    data.write_text("\n".join(json.dumps({**PROBLEM, "id": f"add-{i}"}) for i in range(4)))
    async with SimServer(SimConfig(model=SCRIPT)) as sim:
        toml = tmp_path / "code.toml"
        toml.write_text(
            'policy = "prompt"\n'
            '[prompt]\ninstructions = ["Write the function."]\nmax_demos = 0\n'
            '[environment]\nname = "code"\nmax_turns = 3\ndeadline = 120.0\n'
            f'[endpoint]\nbase_url = "{sim.base_url}"\nmode = "chat"\n'
            f'[data]\ntrain = "{data}"\nbatch_size = 2\neval_fraction = 0.0\n'
            "[grpo]\ngroup_size = 2\nmini_batch_size = 2\n"
            "[trainer]\neval_every = 0\n[sandbox]\nwall_seconds = 20.0\n"
        )
        out = tmp_path / "run"
        done = await run_engine(
            ["run", "--config", str(toml), "--out", str(out), "--steps", "1", "--quiet"],
            limit=300,
        )
    assert done.returncode == 0, done.err[-3000:]
    (m,) = jsonl_records(out / "metrics.jsonl")
    assert m["episodes/done"] == 4 and m["episodes/error"] == 0
    assert m["episodes/tool_calls"] == 4
    assert m["reward"] == 1.0


async def test_a_sandbox_failure_in_the_tool_ends_the_episode() -> None:
    """The python tool's SandboxError is not returned to the model: it propagates."""
    tool = PythonTool(Sandbox(SandboxConfig(python="/nonexistent/python3")))
    with pytest.raises(SandboxError):
        await run_call({"python": tool}, CALL)


def test_the_code_environment_takes_the_run_sandbox_limits() -> None:
    """[sandbox] reaches the built-in code environment's sandbox."""
    config = load_config(overrides=['environment.name="code"', "sandbox.memory_mb=256"])
    env = make_environment("code", config)
    assert env.name == "code"
    assert env.sandbox.config.memory_mb == 256  # type: ignore[attr-defined]


async def test_a_sandbox_failure_in_the_tests_fails_the_episode() -> None:
    """The answer's tests cannot run: finish raises (NaN for the runner), it does not score 0."""
    env = CodeEnvironment(Sandbox(SandboxConfig(python="/nonexistent/python3")))
    example = parse_example(PROBLEM)
    episode = await env.start(example)
    record = EpisodeRecord("g.0", "code", [TurnRecord(0, PROBLEM["answer"])])
    with pytest.raises(SandboxError):
        await episode.finish(record)
    good = await CodeEnvironment().start(example)
    assert await good.finish(record) == 1.0
    calling = EpisodeRecord("g.1", "code", [TurnRecord(0, "", tool_calls=(CALL,))])
    assert await good.finish(calling) == 0.0  # cut while still calling: no answer, a real 0
