"""Sandbox stage: a completion's code against an example's tests, in the sandbox.

Example::

    outcome = await run_unit_tests(sandbox, "def add(a, b):\\n    return a + b",
                                   ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
    outcome.fraction      # 1.0

The code and each test run in one sandboxed interpreter (:mod:`engine.sandbox._harness`):
the code first, then each test in the code's namespace, each with ``test_seconds`` of
wall-clock time. Reports come back on a pipe of their own, each line prefixed by a nonce the
harness read from stdin before the code ran, so what the code prints cannot pass a test.

Two outcomes are kept apart. The code failing (an exception, a wrong answer, an infinite
loop, a memory or CPU limit, ``sys.exit`` before the tests) is a *score*: the tests without a
``pass`` report failed. The sandbox failing (it cannot isolate, cannot start, the harness
never reported ready) raises :class:`~engine.errors.SandboxError`: no score at all.

Not a security boundary against a hostile solution that targets the harness: the tests run in
the code's interpreter, so code written to tamper with them (an object whose ``__eq__``
is always true, patching the harness's frames to find the nonce) can pass them. Rewarding
such code is reward hacking a real model can learn; see README, Sandbox.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import SandboxError
from .runner import Sandbox, SandboxResult

__all__ = ("HARNESS", "TestOutcome", "extract_code", "run_unit_tests")

HARNESS = str(Path(__file__).with_name("_harness.py"))
"""The harness script (run in the sandbox, never imported)."""

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The Python code of a completion.

    The fenced blocks (```` ```python ... ``` ````; an unclosed one runs to the end) tagged
    python, py or untagged: the last that defines ``entry_point`` when given, else the first.
    Text before an unmatched first fence is the code when there is any (the completion closes
    a fence its prompt opened); with no fence at all, the whole text.
    """
    head = text.split("```", 1)[0]
    if text.count("```") % 2 == 1 and head.strip():  # closes a fence the prompt opened
        return head.strip("\n")
    blocks = [
        body
        for lang, body in _FENCE_RE.findall(text)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if blocks:
        if entry_point:
            defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\b", b)]
            if defining:
                return defining[-1].strip("\n")
        return blocks[0].strip("\n")
    return text.strip("\n")


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """How a solution did on its tests.

    Attributes:
        passed: tests that passed.
        total: tests run.
        results: per test, ``"pass"`` or why it failed (an exception name, ``"no report"``
            when the run ended before it, ``"load: NAME"`` when the code itself raised).
        run: the sandbox run (its output, exit status, limit hit).
    """

    __test__ = False  # not a pytest class

    passed: int
    total: int
    results: tuple[str, ...]
    run: SandboxResult

    @property
    def fraction(self) -> float:
        """``passed / total``: the ``unit_tests`` reward."""
        return self.passed / self.total


async def run_unit_tests(
    sandbox: Sandbox, code: str, tests: Sequence[str], *, test_seconds: float | None = None
) -> TestOutcome:
    """Run ``code`` then each of ``tests`` (Python statements, e.g. ``assert f(1) == 2``).

    Raises:
        ValueError: no tests, or a test that is not a string.
        SandboxUnavailable: the platform cannot isolate code (nothing was run).
        SandboxError: the sandbox or its harness failed (no score).
    """
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("unit tests must be a non-empty list of strings")
    seconds = sandbox.config.test_seconds if test_seconds is None else test_seconds
    nonce = secrets.token_hex(16)
    files = {
        "solution.py": code,
        "tests.json": orjson.dumps({"tests": list(tests), "test_seconds": seconds}),
    }
    run = await sandbox.run_script(
        [HARNESS], files=files, stdin=(nonce + "\n").encode(), channel=True
    )
    return _outcome(run, nonce, len(tests))


def _outcome(run: SandboxResult, nonce: str, total: int) -> TestOutcome:
    """Read the harness's reports; SandboxError when it never got ready."""
    results = ["no report"] * total
    ready = False
    for raw in run.channel.decode(errors="replace").splitlines():
        parts = raw.split()
        if len(parts) < 2 or parts[0] != nonce:
            continue
        kind = parts[1]
        if kind == "ready":
            ready = len(parts) == 3 and parts[2] == str(total)
        elif kind == "load" and ready:
            results = [f"load: {parts[3] if len(parts) > 3 else 'error'}"] * total
        elif kind == "test" and ready and len(parts) >= 4 and parts[2].isdigit():
            i = int(parts[2])
            if 0 <= i < total and results[i] == "no report":
                results[i] = "pass" if parts[3] == "pass" else " ".join(parts[4:]) or "fail"
    if not ready:
        tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(f"the unit-test harness never started ({run.describe()}): {tail[0]}")
    passed = sum(r == "pass" for r in results)
    return TestOutcome(passed, total, tuple(results), run)
