"""An episode's exchange with an endpoint policy: every turn one request through its client.

:class:`EndpointConversation` implements :class:`~engine.environments.base.Conversation` for a
policy that generates through the endpoint client (:class:`~engine.policies.episodes.EpisodePolicy`:
the prompt policy), so the client's rate limits, retries and per-attempt events apply to every
turn, and each turn's events carry ``episode`` and ``turn``. Two tool protocols:

- ``chat``: OpenAI ``tools`` in the request, the server's ``tool_calls`` in the answer
  (validated, :func:`~engine.endpoints.guards.read_tool_calls`); the assistant message is kept
  with its calls, each result follows as a ``{"role": "tool", "tool_call_id": ...}`` message
  in call order, and an environment's message as a user message. Parallel calls are one
  assistant message with several calls.
- ``text``: the tag protocol of :mod:`~engine.environments.text_protocol`, in completions
  mode (the context is one growing prompt: the turn's text with its closing tag restored, then
  the results) or in chat mode (the turn as an assistant message, the results as a user one).

The context's size (:attr:`EndpointConversation.tokens`) is the last request's prompt plus
completion tokens as the server counted them, plus an estimate (four characters a token) of
what was appended since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..endpoints.parsing import text_of
from ..endpoints.payload import estimate_tokens
from ..policies.base import CompletionClient
from ..policies.episodes import EpisodeOpening
from ..types import Sample
from . import text_protocol
from .base import EpisodeRecord, Tool, ToolResult, TurnOutput
from .tools import tool_specs

__all__ = ("EndpointConversation", "Protocol")

Protocol = Literal["chat", "text"]
"""How tool calls travel: the OpenAI ``tools`` parameter, or tags in the text."""


class EndpointConversation:
    """One episode of an endpoint policy (see the module docstring).

    Args:
        client: the policy's endpoint client.
        opening: the policy's first prompt, mode, temperature and action fields.
        protocol: ``chat`` (needs chat mode) or ``text``.
        tools: the episode's tools (sent as ``tools`` in the chat protocol).
        episode_id: recorded in every turn's events.
        seed: the seed of turn 0; turn ``t`` sends ``seed + t``. None sends none.

    Raises:
        ValueError: the chat protocol in completions mode.
    """

    embedded = False

    def __init__(
        self,
        client: CompletionClient,
        opening: EpisodeOpening,
        *,
        protocol: Protocol,
        tools: Sequence[Tool],
        episode_id: str,
        seed: int | None = None,
    ) -> None:
        if protocol == "chat" and opening.mode != "chat":
            raise ValueError("the chat tool protocol needs endpoint.mode = 'chat'")
        self.client = client
        self.opening = opening
        self.protocol: Protocol = protocol
        self.episode_id = episode_id
        self.seed = seed
        self._specs = tool_specs(tools) if protocol == "chat" and tools else None
        stops = [*text_protocol.STOP, *opening.stop] if protocol == "text" else [*opening.stop]
        self._stop: list[str] | None = list(dict.fromkeys(stops))[:4] or None
        self._prompt_text = _prompt_text(opening.prompt)
        self.messages: list[dict[str, Any]] = []
        self.text = ""
        if opening.mode == "chat":
            prompt = opening.prompt
            if isinstance(prompt, str):
                self.messages = [{"role": "user", "content": prompt}]
            else:
                self.messages = [dict(m) for m in prompt]
        else:
            if not isinstance(opening.prompt, str):
                raise ValueError("completions mode takes a prompt string, not chat messages")
            self.text = opening.prompt
        self.tokens = estimate_tokens(self.messages if opening.mode == "chat" else self.text)

    @property
    def context(self) -> str | list[dict[str, Any]]:
        """What the next turn's request sends: the messages, or the prompt text."""
        return self.messages if self.opening.mode == "chat" else self.text

    async def generate(self, turn: int, *, max_tokens: int | None) -> TurnOutput:
        """One request for turn ``turn``; its choice parsed into text and calls."""
        kwargs: dict[str, Any] = {}
        if self._specs is not None:
            kwargs["tools"] = self._specs
        completion = await self.client.complete(
            self.context,
            n=1,
            kind="generation",
            policy_version=self.opening.policy_version,
            mode=self.opening.mode,
            max_tokens=max_tokens,
            temperature=self.opening.temperature,
            stop=self._stop,
            seed=None if self.seed is None else self.seed + turn,
            episode=self.episode_id,
            turn=turn,
            **kwargs,
        )
        choice = completion.choices[0]
        text = choice.text
        if self.protocol == "chat":
            calls = choice.tool_calls
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = [_call_message(c.id, c.name, c.arguments) for c in calls]
            self.messages.append(message)
        else:
            calls = text_protocol.parse_calls(text, turn)
            kept = text_protocol.closed_turn(text) if calls else text
            if self.opening.mode == "chat":
                self.messages.append({"role": "assistant", "content": kept})
            else:
                self.text += kept
        usage = completion.usage
        if usage.prompt_tokens or usage.completion_tokens:
            self.tokens = usage.prompt_tokens + usage.completion_tokens
        else:
            self.tokens += len(text) // 4 + 1
        return TurnOutput(
            text=text,
            tool_calls=tuple(calls),
            finish_reason=choice.finish_reason or "stop",
            usage=usage,
            latency=completion.latency,
        )

    def add_reply(
        self, turn: TurnOutput, results: Sequence[ToolResult], message: str | None
    ) -> None:
        """Append the results (and the environment's message) to the context."""
        added = ""
        if self.protocol == "chat":
            for r in results:
                self.messages.append(
                    {"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                )
                added += r.content
            if message:
                self.messages.append({"role": "user", "content": message})
                added += message
        else:
            reply = text_protocol.render_reply(results, message)
            if self.opening.mode == "chat":
                if reply.strip():
                    self.messages.append({"role": "user", "content": reply.strip()})
            else:
                self.text += reply
            added = reply
        self.tokens += len(added) // 4 + 1 if added else 0

    def sample(self, record: EpisodeRecord) -> Sample:
        """The episode as one Sample of the policy's type: ``text`` the answer (the last
        turn's words, its tool calls left out), ``prompt`` the first prompt, the policy's
        action fields, the turns' usage and latency summed."""
        last = record.turns[-1] if record.turns else None
        return self.opening.sample_type(
            text=text_protocol.answer_text(record.answer),
            prompt=self._prompt_text,
            finish_reason=last.finish_reason if last is not None else "stop",
            usage=record.usage,
            latency=sum(t.latency for t in record.turns),
            episode=record,
            **dict(self.opening.fields),
        )


def _call_message(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A call as the assistant message replays it (a malformed call keeps its id, so its
    error result still answers it)."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name or "unknown", "arguments": arguments or "{}"},
    }


def _prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """The first prompt as text (chat messages as ``role: content`` blocks)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role')}: {text_of(m.get('content'))}" for m in prompt)
