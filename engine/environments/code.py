"""The built-in code environment: write the function, try it with the ``python`` tool.

Data: the built-in ``code`` dataset (``engine/data/datasets/code.jsonl``): a problem a line
with its ``tests`` and ``entry_point``. An episode: the policy reads the problem, may run
code with the ``python`` tool (:class:`~engine.environments.python_tool.PythonTool`, in the
sandbox: it reads the output, errors and limits its code hit) as often as the turn limit
allows, and answers in a turn without a call. The reward at the end is the ``unit_tests``
reward of that answer (:mod:`engine.rewards.code`): the fraction of the problem's tests its
code passes, run in the sandbox. An episode that gave no answer (cut by a limit while still
calling) scores 0: the policy's doing. A sandbox failure (in the tool or in the tests) is
the episode's failure: NaN with the error, never 0.

Both the tool and the tests run on one :class:`~engine.sandbox.Sandbox`, so the run's
``[sandbox]`` limits and concurrency bound cover them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..rewards.code import UnitTestsReward, example_tests
from ..sandbox import Sandbox
from ..types import Example
from .base import EpisodeRecord, PolicyTurn, Reply, Tool, ToolResult
from .python_tool import PythonTool

__all__ = ("INSTRUCTION", "CodeEnvironment", "CodeEpisode")

INSTRUCTION: Final = (
    "Write the Python function asked for. You may run code with the python tool to check it. "
    "End with the whole function in one ```python block."
)


@dataclass(slots=True)
class CodeEpisode:
    """One code episode (see the module docstring)."""

    prompt: str
    example: Example
    reward: UnitTestsReward
    tools: Sequence[Tool] = field(default_factory=tuple)

    async def step(self, turn: PolicyTurn, results: Sequence[ToolResult]) -> Reply:
        """Done at the first turn without a tool call (the answer)."""
        return Reply(done=not turn.tool_calls)

    async def finish(self, record: EpisodeRecord) -> float:
        """The answer's fraction of tests passed; 0.0 without an answer.

        Raises:
            SandboxError: the sandbox failed (the episode's failure).
        """
        last = record.turns[-1] if record.turns else None
        if last is None or last.tool_calls:
            return 0.0
        return await self.reward(self.example, last.text)

    async def aclose(self) -> None:
        """Nothing to release: each sandbox run cleans up after itself."""


class CodeEnvironment:
    """Makes :class:`CodeEpisode` s from examples with ``tests``.

    Args:
        sandbox: where the tool's code and the tests run (default limits when None).
        instruction: put before each problem.
    """

    name = "code"

    def __init__(self, sandbox: Sandbox | None = None, instruction: str = INSTRUCTION) -> None:
        self.sandbox = sandbox or Sandbox()
        self.instruction = instruction
        self._tool = PythonTool(self.sandbox)
        self._reward = UnitTestsReward(self.sandbox)

    async def start(self, example: Example) -> CodeEpisode:
        """An episode of ``example``.

        Raises:
            RewardError: the example has no tests.
        """
        example_tests(example)
        prompt = f"{self.instruction}\n\n{example.text}" if self.instruction else example.text
        return CodeEpisode(prompt, example, self._reward, (self._tool,))
