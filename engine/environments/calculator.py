"""The built-in calculator task: arithmetic word problems, a calculator tool, reward = right.

Data: ``engine/data/datasets/calculator.jsonl`` (``datasets.load("calculator")``), one
problem a line, ``{"id", "input": {"text": ...}, "output": {"generated": "<number>"}}``.

An episode: the policy reads the problem, may call ``calculator`` (``{"expression":
"12*7+3"}``) as often as it likes within the turn limit, and answers in a turn without a call.
The reward at the end is 1 when the answer's number (the one after ``Answer:``, else the last
number of the last turn) equals the target (within 1e-6 relative), else 0; an episode that
gave no answer (cut by a limit while still calling) scores 0: that is the policy's doing, not
a failure.

The tool evaluates arithmetic by walking the expression's syntax tree
(:func:`evaluate`): numbers, ``+ - * / // % **``, unary signs and parentheses, nothing else
(no names, calls or attributes: nothing is ever ``eval``-ed), with bounds on the expression's
length, the exponents and the size of every intermediate result, so no call can hang the
event loop. Errors (division by zero, a bad expression) are :class:`ToolError` s: the model
reads them as the tool's result.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..types import Example
from .base import EpisodeRecord, PolicyTurn, Reply, Tool, ToolError, ToolResult
from .text_protocol import answer_text
from .tools import FunctionTool

__all__ = (
    "MAX_EXPRESSION_CHARS",
    "CalculatorEnvironment",
    "CalculatorEpisode",
    "answer_number",
    "calculator_tool",
    "evaluate",
)

MAX_EXPRESSION_CHARS: Final = 200
"""The longest expression the calculator reads."""
_MAX_BITS: Final = 1024
"""Integers above 2**1024 in magnitude are refused (every intermediate result)."""
_MAX_FLOAT: Final = 1e300

_BINARY: Final[Mapping[type, Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[Mapping[type, Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_NUMBER_RE: Final = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_RE: Final = re.compile(r"answer\s*[:=]?\s*", re.IGNORECASE)

INSTRUCTION: Final = (
    "Solve the problem. Use the calculator tool for arithmetic. "
    "End with the final answer as: Answer: <number>"
)


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression (see the module docstring).

    Raises:
        ToolError: not arithmetic, too long or too large, or a division by zero.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise ToolError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    except ValueError as exc:  # a null character
        raise ToolError(f"not an arithmetic expression: {exc}") from None
    return _value(tree.body)


def _checked(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _MAX_FLOAT):
        raise ToolError("result too large")
    return value


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ToolError(f"only numbers are allowed, got {type(v).__name__}")
        return _checked(v)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        if isinstance(result, complex):
            raise ToolError("the result is not a real number")
        return _checked(result)
    raise ToolError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would be too large to compute quickly."""
    if abs(exponent) > 10_000:
        if abs(base) in (0, 1):
            return
        raise ToolError("exponent too large")
    if abs(base) > 1 and exponent > 0:
        bits = exponent * math.log2(abs(base))
        if bits > _MAX_BITS:
            raise ToolError("result too large")


def _format(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _calculate(expression: str) -> str:
    if not isinstance(expression, str):
        raise ToolError("expression must be a string")
    return _format(evaluate(expression))


def calculator_tool() -> Tool:
    """The ``calculator`` tool: ``{"expression": "..."}`` -> the value as text."""
    return FunctionTool(
        name="calculator",
        description="Evaluate an arithmetic expression (+ - * / // % ** and parentheses).",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (12 + 30) * 4"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        fn=_calculate,
        inline=True,  # bounded work (module docstring): no thread needed
    )


def answer_number(text: str) -> float | None:
    """The number a final answer gives: the first after ``Answer:``, else the last in the
    text; None when there is none. Thousands separators are ignored."""
    words = answer_text(text)
    tail = None
    for m in _ANSWER_RE.finditer(words):
        tail = words[m.end() :]
    found = _NUMBER_RE.findall(tail) if tail is not None else []
    if not found:
        found = _NUMBER_RE.findall(words)
        if not found:
            return None
        token = found[-1]
    else:
        token = found[0]
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


@dataclass(slots=True)
class CalculatorEpisode:
    """One calculator episode (see the module docstring)."""

    prompt: str
    target: float
    tools: Sequence[Tool] = field(default_factory=lambda: (calculator_tool(),))

    async def step(self, turn: PolicyTurn, results: Sequence[ToolResult]) -> Reply:
        """Done at the first turn without a tool call (the answer)."""
        return Reply(done=not turn.tool_calls)

    async def finish(self, record: EpisodeRecord) -> float:
        """1.0 when the last turn answered the target, else 0.0."""
        last = record.turns[-1] if record.turns else None
        if last is None or last.tool_calls:
            return 0.0
        got = answer_number(last.text)
        if got is None:
            return 0.0
        return float(math.isclose(got, self.target, rel_tol=1e-6, abs_tol=1e-9))

    async def aclose(self) -> None:
        """Nothing to release."""


class CalculatorEnvironment:
    """Makes :class:`CalculatorEpisode` s from examples whose target is a number."""

    name = "calculator"

    def __init__(self, instruction: str = INSTRUCTION) -> None:
        self.instruction = instruction

    async def start(self, example: Example) -> CalculatorEpisode:
        """An episode of ``example``.

        Raises:
            ValueError: the example has no numeric target.
        """
        try:
            target = float(str(example.target).replace(",", ""))
        except ValueError:
            raise ValueError(f"example {example.id!r} has no numeric target") from None
        prompt = f"{self.instruction}\n\n{example.text}" if self.instruction else example.text
        return CalculatorEpisode(prompt, target)
