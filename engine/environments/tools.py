"""Running the policy's tool calls: validation, parallel calls, errors returned as results.

:func:`run_calls` runs every call of one turn concurrently and returns one
:class:`~engine.environments.base.ToolResult` per call, in call order:

- a malformed call (its :attr:`~engine.environments.base.ToolCall.error` is set by the
  parser, its arguments are not a JSON object, or it names no tool of the episode) is not
  run; its result says what is wrong (``error`` starts with ``malformed``);
- a tool that raises :class:`~engine.environments.base.ToolError` returns the message to the
  model as its result; any other exception likewise as ``ExceptionName: message`` (a tool's
  bug is the model's information, not the episode's end); both set ``error``;
- a result longer than ``max_chars`` is cut (the model reads that it was).

Cancellation (the episode's deadline) goes through: it is not a tool error.

:class:`FunctionTool` makes a :class:`~engine.environments.base.Tool` of a function (a sync
one runs in a worker thread); :func:`tool_specs` renders tools as the OpenAI ``tools``
parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson

from .base import Tool, ToolCall, ToolError, ToolResult

__all__ = ("MAX_RESULT_CHARS", "FunctionTool", "run_call", "run_calls", "tool_specs")

MAX_RESULT_CHARS: Final = 8_000
"""The longest result text the model reads back by default."""


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A :class:`~engine.environments.base.Tool` that calls ``fn(**arguments)``.

    Attributes:
        name: what the model calls it by.
        description: what it does.
        parameters: JSON schema of the arguments object.
        fn: returns the result (made a string with ``str``); async, or sync (then run in a
            worker thread unless ``inline``).
        inline: run a sync ``fn`` on the event loop (only for trivially cheap work).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    inline: bool = False

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Call ``fn`` with the arguments as keywords; a missing or unexpected argument is a
        :class:`ToolError`."""
        try:
            inspect.signature(self.fn).bind(**arguments)
        except TypeError as exc:
            raise ToolError(f"bad arguments for {self.name}: {exc}") from None
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**arguments)
        elif self.inline:
            value = self.fn(**arguments)
        else:
            value = await anyio.to_thread.run_sync(lambda: self.fn(**arguments))
        return value if isinstance(value, str) else str(value)


def tool_specs(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The OpenAI ``tools`` parameter: ``[{"type": "function", "function": {...}}]``."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


async def run_call(
    tools: Mapping[str, Tool], call: ToolCall, *, max_chars: int = MAX_RESULT_CHARS
) -> ToolResult:
    """Run one call (see the module docstring); never raises but for cancellation."""

    def result(content: str, error: str | None = None) -> ToolResult:
        if len(content) > max_chars:
            content = content[:max_chars] + f"... [cut at {max_chars} characters]"
        return ToolResult(call.id, call.name, content, error)

    if call.error is not None:
        return result(f"error: {call.error}", call.error)
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        why = f"malformed: unknown tool {call.name[:100]!r}; tools: {known}"
        return result(f"error: {why}", why)
    try:
        arguments = orjson.loads(call.arguments) if call.arguments.strip() else {}
    except orjson.JSONDecodeError as exc:
        why = f"malformed: the arguments are not valid JSON ({exc})"
        return result(f"error: {why}", why)
    if type(arguments) is not dict:
        why = "malformed: the arguments must be a JSON object"
        return result(f"error: {why}", why)
    try:
        content = await tool(arguments)
    except ToolError as exc:
        return result(f"error: {exc}", f"ToolError: {exc}")
    except Exception as exc:  # a tool's failure is the model's to read, not the episode's end
        why = f"{type(exc).__name__}: {exc}"
        return result(f"error: {why}", why)
    if not isinstance(content, str):
        why = f"TypeError: tool {call.name!r} returned {type(content).__name__}, not str"
        return result(f"error: {why}", why)
    return result(content)


async def run_calls(
    tools: Sequence[Tool], calls: Sequence[ToolCall], *, max_chars: int = MAX_RESULT_CHARS
) -> list[ToolResult]:
    """Run ``calls`` concurrently; one result per call, in call order.

    Should a call raise (not a tool's failure, which is a result: a failure of the machinery
    a tool runs on), the other calls are cancelled and that exception is raised as it is, not
    wrapped in an exception group.
    """
    by_name = {t.name: t for t in tools}
    out: list[ToolResult | None] = [None] * len(calls)
    if len(calls) == 1:
        return [await run_call(by_name, calls[0], max_chars=max_chars)]
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def one(i: int, call: ToolCall) -> None:
            try:
                out[i] = await run_call(by_name, call, max_chars=max_chars)
            except Exception as exc:  # raised below, once the siblings are cancelled
                errors.append(exc)
                tg.cancel_scope.cancel()

        for i, call in enumerate(calls):
            tg.start_soon(one, i, call)
    if errors:
        raise errors[0]
    return [r for r in out if r is not None]
