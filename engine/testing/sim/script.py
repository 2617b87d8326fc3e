"""Scripted tool calls: a fake model that answers each turn of an episode as a test says.

A :class:`ToolScript` is a :data:`~engine.testing.sim.config.ModelFn` (``SimConfig(model=
ToolScript(...))``) that answers turn ``t`` of a conversation with its ``t``-th
:class:`SimReply` (the last one again past the end)::

    script = ToolScript([
        SimReply(tool_calls=(SimToolCall("calculator", {"expression": "2+2"}),
                             SimToolCall("calculator", {"expression": "3*3"}))),  # parallel
        SimReply("Answer: 13"),
    ])
    async with SimServer(SimConfig(model=script)) as sim: ...

The turn is read from the request itself, so concurrent episodes each follow the script: the
number of turns so far that made calls (the turns an episode goes on after). In chat mode,
assistant messages with ``tool_calls`` (or the text protocol's ``</tool_call>``; few-shot
demonstrations do not count); in completions mode, calls already answered in the prompt (a
``</tool_call>`` directly followed by a ``<tool_result>``,
:mod:`~engine.environments.text_protocol`). ``scripts`` picks a script by a
substring of the prompt (the first that matches), so one server can serve different episodes.

In chat mode a reply's calls are the message's ``tool_calls`` (``finish_reason:
"tool_calls"``), each with its id (``call_<turn>_<i>`` unless given) and its arguments as JSON
text (a string is sent as it is: malformed JSON included); ``raw_tool_calls`` is sent verbatim
instead (any JSON, to test a client's checks). In completions mode the calls are written after
the content in the text protocol, and the request's stop sequences cut the text as usual (so
a text-protocol turn ends at its first ``</tool_call>``, left out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...environments.text_protocol import CALL_CLOSE, CALL_OPEN, RESULT_OPEN
from .config import ModelFn, SimRequest

__all__ = ("SimReply", "SimToolCall", "ToolScript", "chat_tool_calls", "reply_text", "turn_of")


@dataclass(frozen=True, slots=True)
class SimToolCall:
    """One scripted call.

    Attributes:
        name: the tool's name.
        arguments: an object (sent as JSON text), or JSON text sent as it is.
        id: the call id; None: ``call_<turn>_<i>``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_text(self) -> str:
        """The arguments as JSON text."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class SimReply:
    """One scripted answer: text, and tool calls.

    Attributes:
        content: the text (chat: the message content).
        tool_calls: the calls, in order.
        raw_tool_calls: when not None, sent verbatim as the chat message's ``tool_calls``.
    """

    content: str = ""
    tool_calls: tuple[SimToolCall, ...] = ()
    raw_tool_calls: Any = None


def chat_tool_calls(reply: SimReply, turn: int) -> Any:
    """The ``tool_calls`` of a chat message for ``reply`` (None when it has none)."""
    if reply.raw_tool_calls is not None:
        return reply.raw_tool_calls
    if not reply.tool_calls:
        return None
    return [
        {
            "id": c.id or f"call_{turn}_{i}",
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments_text()},
        }
        for i, c in enumerate(reply.tool_calls)
    ]


def reply_text(reply: SimReply) -> str:
    """The completions-mode text of ``reply``: the content, then each call in tags."""
    calls = "".join(
        f'{CALL_OPEN}{{"name": {orjson.dumps(c.name).decode()}, '
        f'"arguments": {c.arguments_text()}}}{CALL_CLOSE}'
        for c in reply.tool_calls
    )
    return reply.content + calls


def turn_of(req: SimRequest) -> int:
    """Which turn of its episode a request is (see the module docstring)."""
    if req.messages is not None:
        return sum(1 for m in req.messages if _calls_tools(m))
    return req.prompt.count(f"{CALL_CLOSE}\n{RESULT_OPEN}")


def _calls_tools(message: Mapping[str, Any]) -> bool:
    """An assistant message that made calls (``tool_calls``, or the text protocol's tags)."""
    if message.get("role") != "assistant":
        return False
    content = message.get("content")
    return bool(message.get("tool_calls")) or (isinstance(content, str) and CALL_CLOSE in content)


class ToolScript:
    """A fake model answering every turn from a script (see the module docstring).

    Args:
        replies: the default script, one reply (or plain text) per turn.
        scripts: other scripts by a substring of the prompt, tried in order first.
        fallback: answers requests that no script matches when there is no default script
            (judges, other prompts); None: such a request is a model error (a 500).

    Attributes:
        seen: the turn of every request answered, in order (for tests).
    """

    def __init__(
        self,
        replies: Sequence[SimReply | str] = (),
        *,
        scripts: Mapping[str, Sequence[SimReply | str]] | None = None,
        fallback: ModelFn | None = None,
    ) -> None:
        if not replies and not scripts:
            raise ValueError("a ToolScript needs replies or scripts")
        self.replies = [_reply(r) for r in replies]
        self.scripts = {k: [_reply(r) for r in v] for k, v in (scripts or {}).items()}
        self.fallback = fallback
        self.seen: list[int] = []

    def __call__(self, req: SimRequest) -> SimReply | str:
        script = next((v for k, v in self.scripts.items() if k in req.prompt), self.replies)
        if not script:
            if self.fallback is None:
                raise ValueError("no script matches the prompt")
            return self.fallback(req)
        turn = turn_of(req)
        self.seen.append(turn)
        return script[min(turn, len(script) - 1)]


def _reply(r: SimReply | str) -> SimReply:
    return r if isinstance(r, SimReply) else SimReply(r)
