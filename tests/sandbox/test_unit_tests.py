"""The unit_tests reward: fractions of tests passed, and sandbox failures kept apart from 0."""

from __future__ import annotations

import math

import pytest

from engine.config.loading import load_config
from engine.config.sections import SandboxConfig
from engine.data import datasets
from engine.environments.base import Tool, ToolError
from engine.environments.python_tool import PythonTool
from engine.errors import ConfigError, SandboxError
from engine.rewards.code import UnitTestsReward
from engine.rewards.rewarder import Rewarder, RewardSpec
from engine.sandbox import Sandbox
from engine.sandbox.unit_tests import extract_code
from engine.training.assembly import build_rewarder
from engine.types import Example

ADD = Example(
    "add",
    "Write add(a, b).",
    {"text": "Write add(a, b)."},
    None,
    None,
    {
        "entry_point": "add",
        "tests": [
            "assert add(1, 2) == 3",
            "assert add(-1, 1) == 0",
            "assert add(0, 0) == 0",
            "assert add(2, 2) == 4",
        ],
    },
)


def fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}\n```\nDone."


@pytest.fixture
def reward() -> UnitTestsReward:
    return UnitTestsReward(Sandbox(SandboxConfig(test_seconds=1.0, wall_seconds=20.0)))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def add(a, b):\n    return a + b", 1.0),
        ("def add(a, b):\n    return a - b", 0.25),  # only add(0, 0) == 0
        ("def add(a, b):\n    return 0", 0.5),  # add(-1, 1) and add(0, 0)
        ("def add(a, b):\n    return None", 0.0),
        ("def add(a, b)\n    return a + b", 0.0),  # a syntax error
        ("raise RuntimeError('at import')", 0.0),
    ],
)
async def test_the_reward_is_the_fraction_of_tests_passed(
    reward: UnitTestsReward, code: str, expected: float
) -> None:
    """Each test is worth 1/N; code that does not load passes none."""
    assert await reward(ADD, fenced(code)) == expected


async def test_a_slow_test_fails_alone(reward: UnitTestsReward) -> None:
    """A test that loops fails at test_seconds; the other tests still count."""
    code = "def add(a, b):\n    while a == -1:\n        pass\n    return a + b"
    outcome = await reward.outcome(ADD, fenced(code))
    assert outcome is not None and outcome.passed == 3
    assert outcome.results[1] == "TestTimeout"


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",  # leave before the tests
        "import os\nos._exit(0)",
        # print what a passing report looks like, without the nonce
        "for i in range(4):\n    print('ready 4')\n    print(f'test {i} pass')\n"
        "import os\nos._exit(0)",
    ],
)
async def test_leaving_early_or_forging_output_passes_nothing(
    reward: UnitTestsReward, code: str
) -> None:
    """Tests without a report from the harness failed: exiting or printing earns nothing."""
    assert await reward(ADD, fenced(code)) == 0.0


async def test_a_completion_without_code_scores_zero(reward: UnitTestsReward) -> None:
    """No code is the policy's failure: a real 0, not NaN."""
    assert await reward(ADD, "") == 0.0


async def test_a_sandbox_failure_is_nan_with_an_error_not_zero() -> None:
    """When the sandbox cannot run the code, the rollout's reward is NaN and says why."""
    broken = UnitTestsReward(Sandbox(SandboxConfig(python="/nonexistent/python3")))
    rewarder = Rewarder([RewardSpec("unit_tests", broken.__call__)])
    score = await rewarder.score(ADD, fenced("def add(a, b):\n    return a + b"))
    assert math.isnan(score.reward)
    assert score.error is not None and "unit_tests" in score.error
    assert "SandboxUnavailable" in score.error
    assert rewarder.statistics().failures == 1


async def test_an_example_without_tests_is_a_recorded_failure(reward: UnitTestsReward) -> None:
    """A non-code example is NaN with an error, not 0."""
    rewarder = Rewarder([RewardSpec("unit_tests", reward.__call__)])
    plain = Example("p", "hi", {"text": "hi"}, "x", None, {})
    score = await rewarder.score(plain, "def f(): pass")
    assert math.isnan(score.reward) and "no 'tests'" in (score.error or "")


async def test_every_shipped_problem_is_solved_by_its_reference() -> None:
    """The code dataset's reference answers pass all their tests (the task is well posed)."""
    reward = UnitTestsReward(Sandbox(SandboxConfig(wall_seconds=30.0)))
    examples = datasets.load("code")
    assert len(examples) >= 20
    for ex in examples:
        assert ex.target is not None
        assert await reward(ex, ex.target) == 1.0, ex.id


async def test_the_config_sandbox_reaches_the_reward() -> None:
    """[sandbox] limits are validated and used by the run's unit_tests reward."""
    with pytest.raises(ConfigError, match=r"sandbox\.memory_mb"):
        load_config(overrides=["sandbox.memory_mb=1"])
    config = load_config(overrides=['reward.functions=["unit_tests"]', "sandbox.test_seconds=0.5"])
    rewarder = build_rewarder(config)
    fn = rewarder.specs[0].fn
    assert fn.__self__.sandbox.config.test_seconds == 0.5  # type: ignore[attr-defined]
    slow = "def add(a, b):\n    import time\n    time.sleep(0.8)\n    return a + b"
    score = await rewarder.score(ADD, fenced(slow))
    assert score.reward == 0.0  # every test ran past 0.5 s


def test_extract_code() -> None:
    """The fenced block that defines the entry point; an unclosed fence; a bare closing one."""
    two = "```python\ndef helper():\n    pass\n```\n```python\ndef add(a, b):\n    return 1\n```"
    assert extract_code(two, "add") == "def add(a, b):\n    return 1"
    assert extract_code(two) == "def helper():\n    pass"
    assert extract_code("```py\nx = 1\n") == "x = 1"
    assert extract_code("def f():\n    return 2\n```\ntext") == "def f():\n    return 2"
    assert extract_code("```bash\nls\n```") == "```bash\nls\n```"  # no python block
    assert extract_code("plain") == "plain"


async def test_the_python_tool_returns_output_and_limits_as_text() -> None:
    """The tool follows the Tool protocol; errors and limits are the model's to read."""
    tool = PythonTool(Sandbox(SandboxConfig(wall_seconds=1.0)))
    assert isinstance(tool, Tool) and tool.name == "python"
    assert await tool({"code": "print(6 * 7)"}) == "42\n"
    failed = await tool({"code": "raise ValueError('bad')"})
    assert "ValueError: bad" in failed and failed.rstrip().endswith("[exit 1]")
    assert (await tool({"code": "import time\ntime.sleep(30)"})).endswith("[killed: wall limit]\n")
    with pytest.raises(ToolError):
        await tool({"program": "print(1)"})


async def test_the_python_tool_raises_when_the_sandbox_fails() -> None:
    """A broken sandbox is the episode's failure (SandboxError), not a tool result."""
    tool = PythonTool(Sandbox(SandboxConfig(python="/nonexistent/python3")))
    with pytest.raises(SandboxError):
        await tool({"code": "print(1)"})
