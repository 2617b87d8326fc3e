"""Reward stage: ``unit_tests``, the fraction of an example's tests a completion's code passes.

The example carries its tests in the dataset line (``Example.meta``): ``"tests"``, a list of
Python statements such as ``"assert add(1, 2) == 3"``, and optionally ``"entry_point"``, the
function the task asks for (it picks the right fenced block, see
:func:`~engine.sandbox.unit_tests.extract_code`). The code runs in the sandbox
(:mod:`engine.sandbox`), in a subprocess: nothing blocks the event loop.

* the code fails a test, loops, runs out of memory, or the completion has no code at all:
  a real score (the fraction that passed, possibly 0);
* the example has no tests, or the sandbox fails (cannot isolate, cannot start): the reward
  function raises, so the rollout is a recorded failure (reward NaN with the error), never 0.

Example::

    reward = UnitTestsReward(Sandbox(SandboxConfig(wall_seconds=5)))
    rewarder = Rewarder([RewardSpec("unit_tests", reward)])
"""

from __future__ import annotations

from ..errors import RewardError
from ..sandbox import Sandbox
from ..sandbox.unit_tests import TestOutcome, extract_code, run_unit_tests
from ..types import Example

__all__ = ("UnitTestsReward", "example_tests", "unit_tests")


def example_tests(example: Example) -> tuple[list[str], str | None]:
    """The example's tests and entry point.

    Raises:
        RewardError: the example has no ``tests`` list of strings (not a code-task example).
    """
    tests = example.meta.get("tests", example.inputs.get("tests"))
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise RewardError(f"example {example.id!r} has no 'tests' list of strings")
    entry = example.meta.get("entry_point", example.inputs.get("entry_point"))
    return tests, entry if isinstance(entry, str) and entry else None


class UnitTestsReward:
    """The ``unit_tests`` reward on one :class:`~engine.sandbox.Sandbox` (its limits and
    its concurrency bound). Call it as ``await reward(example, text)``.

    Attributes:
        sandbox: where the code runs.
    """

    __name__ = "unit_tests"

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox or Sandbox()

    async def outcome(self, example: Example, text: str) -> TestOutcome | None:
        """The tests' outcome, or None when the completion holds no code."""
        tests, entry = example_tests(example)
        code = extract_code(text, entry)
        if not code.strip():
            return None
        return await run_unit_tests(self.sandbox, code, tests)

    async def __call__(self, example: Example, text: str) -> float:
        """Fraction of the example's tests passed, in [0, 1]."""
        outcome = await self.outcome(example, text)
        return 0.0 if outcome is None else outcome.fraction


_DEFAULT = UnitTestsReward()


async def unit_tests(example: Example, text: str) -> float:
    """Fraction of the example's tests the completion's code passes, in the sandbox with the
    default limits (:class:`~engine.config.sections.SandboxConfig`); a run's ``[sandbox]``
    section gives its own (see :func:`engine.training.assembly.build_rewarder`)."""
    return await _DEFAULT(example, text)
