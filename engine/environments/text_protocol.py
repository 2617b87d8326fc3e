"""The plain-text tool protocol: tags around a call and its result, for completions mode.

Base models, the embedded LM and the torch policy have no ``tools`` parameter, so a call is
written in the policy's text::

    <tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>

Generation stops at ``</tool_call>`` (:data:`STOP`; a server usually leaves the stop string
out of the text, a token policy keeps the tokens it generated: :func:`parse_calls` takes
both). The environment's answer is appended as one ``<tool_result>...</tool_result>`` per
call, in call order, each on its own line, and the policy continues::

    <tool_result>84</tool_result>

A turn's text stays in the context as generated, with the closing tag put back where the
stop cut it (:func:`closed_turn`). A message of the environment (feedback, a user's reply)
follows the results as plain text on its own line.

What the policy writes is untrusted: a call whose body is not a JSON object with a string
``name`` and an object ``arguments`` is recorded as malformed (:attr:`ToolCall.error`), a
body over :data:`MAX_CALL_CHARS` likewise, and at most :data:`MAX_CALLS` calls of one turn
are read (the rest is one malformed call). Result texts cannot close their own tag: a
``</tool_result>`` inside one is written ``<\\/tool_result>``.

Example::

    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}'
    calls = parse_calls(text, turn=0)
    calls[0].name, calls[0].arguments      # ('calculator', '{"expression":"2+2"}')
    render_results([ToolResult(calls[0].id, "calculator", "4")])
    # '<tool_result>4</tool_result>'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from .base import Tool, ToolCall, ToolResult

__all__ = (
    "CALL_CLOSE",
    "CALL_OPEN",
    "MAX_CALLS",
    "MAX_CALL_CHARS",
    "RESULT_CLOSE",
    "RESULT_OPEN",
    "STOP",
    "answer_text",
    "closed_turn",
    "instructions",
    "parse_calls",
    "render_call",
    "render_reply",
    "render_results",
)

CALL_OPEN: Final = "<tool_call>"
CALL_CLOSE: Final = "</tool_call>"
RESULT_OPEN: Final = "<tool_result>"
RESULT_CLOSE: Final = "</tool_result>"
STOP: Final = (CALL_CLOSE,)
"""The stop sequences of a turn: generation ends after the first call."""
MAX_CALLS: Final = 8
"""Calls read from one turn; more are answered with one malformed result."""
MAX_CALL_CHARS: Final = 16_384
"""The longest call body read; a longer one is malformed."""


def parse_calls(text: str, turn: int) -> tuple[ToolCall, ...]:
    """The calls of one turn's text, in order; ids ``call_{turn}_{i}``.

    A ``<tool_call>`` without its closing tag runs to the end of the text (the stop sequence
    cut it). Text outside the tags is ignored.
    """
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(CALL_OPEN, pos)
        if start < 0:
            break
        body_start = start + len(CALL_OPEN)
        end = text.find(CALL_CLOSE, body_start)
        body = text[body_start:] if end < 0 else text[body_start:end]
        pos = len(text) if end < 0 else end + len(CALL_CLOSE)
        call_id = f"call_{turn}_{len(calls)}"
        if len(calls) == MAX_CALLS:
            calls.append(
                ToolCall(call_id, "", "", f"malformed: more than {MAX_CALLS} calls in one turn")
            )
            break
        calls.append(_parse_body(body.strip(), call_id))
    return tuple(calls)


def _parse_body(body: str, call_id: str) -> ToolCall:
    """One call from the JSON between the tags."""
    if len(body) > MAX_CALL_CHARS:
        return ToolCall(call_id, "", "", f"malformed: call longer than {MAX_CALL_CHARS} characters")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return ToolCall(call_id, "", body, f"malformed: the call is not valid JSON ({exc})")
    if type(doc) is not dict:
        return ToolCall(call_id, "", body, "malformed: the call must be a JSON object")
    name = doc.get("name")
    if type(name) is not str or not name:
        return ToolCall(call_id, "", body, 'malformed: the call has no string "name"')
    args = doc.get("arguments", {})
    if type(args) is str:  # some models write the arguments as JSON text, as chat APIs do
        return ToolCall(call_id, name, args)
    if type(args) is not dict:
        return ToolCall(call_id, name, body, 'malformed: "arguments" must be a JSON object')
    return ToolCall(call_id, name, orjson.dumps(args).decode())


def render_call(name: str, arguments: Any) -> str:
    """The tagged text of one call (``arguments``: an object, or its JSON text)."""
    args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    body = orjson.dumps({"name": name, "arguments": args}).decode()
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def closed_turn(text: str) -> str:
    """A turn's text as it stays in the context: a last call left open by the stop sequence
    gets its closing tag back."""
    last_open = text.rfind(CALL_OPEN)
    if last_open >= 0 and text.find(CALL_CLOSE, last_open) < 0:
        return text + CALL_CLOSE
    return text


def _escaped(content: str) -> str:
    return content.replace(RESULT_CLOSE, "<\\/tool_result>")


def render_results(results: Sequence[ToolResult]) -> str:
    """One ``<tool_result>`` line per result, in order."""
    return "\n".join(f"{RESULT_OPEN}{_escaped(r.content)}{RESULT_CLOSE}" for r in results)


def render_reply(results: Sequence[ToolResult], message: str | None) -> str:
    """What follows a turn in the context: a newline, the results, the message, a newline
    (so the policy continues on a line of its own)."""
    parts = []
    if results:
        parts.append(render_results(results))
    if message:
        parts.append(message)
    return "\n" + "\n".join(parts) + "\n" if parts else ""


def answer_text(text: str) -> str:
    """A turn's text without its tool calls (what is left is the policy's words)."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(CALL_OPEN, pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find(CALL_CLOSE, start)
        if end < 0:
            break
        pos = end + len(CALL_CLOSE)
    return "".join(out).strip()


def instructions(tools: Sequence[Tool]) -> str:
    """The text that tells a model without a ``tools`` parameter which tools it has and how
    to call them (prepended to the episode's first prompt)."""
    lines = ["You can call these tools:"]
    for t in tools:
        schema = orjson.dumps(dict(t.parameters)).decode()
        lines.append(f"- {t.name}: {t.description} Arguments (JSON schema): {schema}")
    example_tool = tools[0].name if tools else "tool"
    lines.append(
        f"To call a tool, write {CALL_OPEN}"
        f'{{"name": "{example_tool}", "arguments": {{...}}}}{CALL_CLOSE} and wait: the result '
        f"comes back as {RESULT_OPEN}...{RESULT_CLOSE}. When you know the answer, write it "
        "without a tool call."
    )
    return "\n".join(lines)
