"""Protocols and records of multi-turn episodes: tools, environments, conversations.

**Episode.** One rollout of a group is one *episode*: a chain of turns against the policy,
driven by :func:`engine.environments.runner.run_episode`::

    episode = await environment.start(example)        # fresh per-episode state and tools
    conversation = <the policy's side>                 # first prompt: episode.prompt
    for turn in range(limits.max_turns):
        out = await conversation.generate(turn, max_tokens=...)   # the policy's turn
        results = [run each tool call of out]          # tools of episode.tools
        reply = await episode.step(PolicyTurn(...), results)      # the environment's reply
        if reply.done or (no tool call and no reply message): break
        conversation.add_reply(results, reply.message)  # what the policy reads next
    final = await episode.finish(record)               # the reward at the end
    await episode.aclose()

**Turn semantics.** Turn ``t`` (from 0) is one generation request of the policy and the
environment's answer to it: the results of the turn's tool calls (in call order, each with
its call id) and, optionally, a message (feedback, a simulated user's next line). The episode
is *done* when the environment says so (:attr:`Reply.done`), or when a turn made no tool call
and the environment had nothing to say (the policy answered: nothing is left for it to read).

**Reward.** The episode's reward is ``finish(record) + sum(turn rewards)``: the reward at the
end plus each :attr:`Reply.reward` the environment gave along the way (kept per turn in
:attr:`TurnRecord.reward`). An episode that *failed* (the endpoint failed past its retries,
the environment raised) has a NaN reward and its rollout is masked from advantages like any
failed rollout: never a reward of 0. An episode cut by a limit (``max_turns``, ``deadline``,
``max_tokens``) is not a failure: it is scored by ``finish`` on what happened.

**Tools.** A :class:`Tool` is a named async callable with a JSON schema for its arguments
(OpenAI ``tools`` format). A tool signals a failure the model should read by raising
:class:`ToolError`; any other exception is returned to the model too (``ExceptionName:
message``) and counted as a tool error. A *malformed* call (bad JSON arguments, an unknown
tool, a call of the wrong shape) is recorded (:attr:`ToolCall.error`) and answered with an
error result; it never ends the episode.

**The policy's side.** A :class:`Conversation` is one episode's exchange with the policy in
one protocol: chat ``tools``/``tool_calls`` through the endpoint client
(:mod:`engine.environments.chat`), the text tag protocol through the endpoint client in
completions mode (:mod:`engine.environments.chat` too), or token ids of a
:class:`~engine.policies.base.TurnPolicy` (``engine.environments.tokens.token_conversation``,
written by the tokens helper; see :class:`Conversation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..types import ToolCall, Usage

if TYPE_CHECKING:
    from ..types import Example, Sample

__all__ = (
    "END_REASONS",
    "Conversation",
    "EndReason",
    "Environment",
    "Episode",
    "EpisodeLimits",
    "EpisodeRecord",
    "PolicyTurn",
    "Reply",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "TurnOutput",
    "TurnRecord",
)

EndReason = Literal["done", "max_turns", "deadline", "max_tokens", "error"]
"""Why an episode ended: the environment (or the policy's answer) ended it; ``max_turns``
turns were taken; the episode's deadline passed; its context reached ``max_tokens``; it failed
(:attr:`EpisodeRecord.error` says why)."""

END_REASONS: tuple[EndReason, ...] = ("done", "max_turns", "deadline", "max_tokens", "error")
"""Every :data:`EndReason`, in the order metrics list them (``episodes/<reason>``)."""


class ToolError(Exception):
    """Raised by a tool; its message is returned to the model as the tool's result."""


@runtime_checkable
class Tool(Protocol):
    """A tool the model may call.

    Attributes:
        name: what the model calls it by.
        description: what it does, shown to the model.
        parameters: JSON schema of the arguments object (OpenAI ``tools`` format).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Run the tool on the (already JSON-decoded) arguments; the result text."""
        ...


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What the policy reads back for one call.

    Attributes:
        call_id: the :attr:`ToolCall.id` it answers.
        name: the tool's name as called.
        content: the text the model reads (the tool's result, or the error).
        error: set when the call was malformed (``malformed: ...``) or the tool failed
            (``ToolError: ...``, ``ValueError: ...``); the model reads it in ``content``.
    """

    call_id: str
    name: str
    content: str
    error: str | None = None

    @property
    def malformed(self) -> bool:
        """The call could not be run (bad arguments, unknown tool, bad shape)."""
        return self.error is not None and self.error.startswith("malformed")


@dataclass(frozen=True, slots=True)
class TurnOutput:
    """What a :class:`Conversation` returns for one policy turn.

    Attributes:
        text: the turn's text as generated (chat: the message content; text protocol: the
            completion, the tags of its tool calls included).
        tool_calls: the calls parsed from the turn, in order.
        finish_reason: ``stop``, ``length``, ``tool_calls``...
        usage: tokens of the turn's request (prompt tokens: the context so far).
        latency: seconds the turn's generation took.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class PolicyTurn:
    """A policy turn as the environment sees it in :meth:`Episode.step`.

    Attributes:
        index: the turn, from 0.
        text: the policy's text of the turn (see :attr:`TurnOutput.text`).
        tool_calls: its calls, in order (malformed ones included).
        finish_reason: why its generation stopped.
    """

    index: int
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The environment's answer to one policy turn (besides the tool results).

    Attributes:
        message: text the policy reads next (feedback, a simulated user's next message);
            None: nothing to say.
        reward: this turn's reward, when the environment gives one.
        done: the episode is over.
    """

    message: str | None = None
    reward: float | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class EpisodeLimits:
    """Limits of one episode; the client's rate limits, retries and events apply to every
    turn on top (each turn is one request through it).

    Attributes:
        max_turns: policy turns at most.
        deadline: seconds for the whole episode (turns and tools); None: no deadline.
        max_tokens: the episode's context (first prompt, every turn, every reply, as the
            endpoint or the tokenizer counts them) at most; each turn's generation is capped
            to what is left. None: no cap but each turn's own ``max_tokens``.
        turn_max_tokens: tokens one turn may generate; None: the endpoint's (or policy's)
            own setting.
    """

    max_turns: int = 8
    deadline: float | None = None
    max_tokens: int | None = None
    turn_max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {self.deadline}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.turn_max_tokens is not None and self.turn_max_tokens < 1:
            raise ValueError(f"turn_max_tokens must be >= 1, got {self.turn_max_tokens}")


@dataclass(slots=True)
class TurnRecord:
    """One turn of a finished episode: the policy's output and the environment's answer.

    Attributes:
        index: the turn, from 0.
        text: the policy's text.
        tool_calls: its calls.
        tool_results: their results, in call order.
        message: the environment's message after it, if any.
        reward: the environment's reward for the turn, if any.
        finish_reason: why the turn's generation stopped.
        usage: tokens of the turn's request.
        latency: seconds its generation took.
    """

    index: int
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    message: str | None = None
    reward: float | None = None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0


@dataclass(slots=True)
class EpisodeRecord:
    """A finished episode (``Sample.episode``): its turns, rewards and why it ended.

    Attributes:
        id: the episode's id (``<group_id>.<n>``), also in its request events.
        environment: the environment's name.
        turns: every turn taken, in order.
        ended: why it ended (:data:`EndReason`).
        final_reward: :meth:`Episode.finish`'s reward; NaN when the episode failed.
        error: why it failed (``ended == "error"``), else None.
        tokens: the context's size at the end (see :attr:`EpisodeLimits.max_tokens`).
        seconds: wall time of the whole episode.
    """

    id: str
    environment: str
    turns: list[TurnRecord] = field(default_factory=list)
    ended: EndReason = "done"
    final_reward: float = math.nan
    error: str | None = None
    tokens: int = 0
    seconds: float = 0.0

    @property
    def reward(self) -> float:
        """The episode's reward: the final reward plus every turn's; NaN when it failed."""
        if self.error is not None:
            return math.nan
        return self.final_reward + sum(t.reward for t in self.turns if t.reward is not None)

    @property
    def tool_calls(self) -> int:
        """Calls made over the episode."""
        return sum(len(t.tool_calls) for t in self.turns)

    @property
    def malformed_calls(self) -> int:
        """Calls that could not be run."""
        return sum(r.malformed for t in self.turns for r in t.tool_results)

    @property
    def tool_errors(self) -> int:
        """Calls run whose tool failed (raised)."""
        return sum(
            r.error is not None and not r.malformed for t in self.turns for r in t.tool_results
        )

    @property
    def usage(self) -> Usage:
        """Tokens of every turn's request together."""
        total = Usage()
        for t in self.turns:
            total = total + t.usage
        return total

    @property
    def answer(self) -> str:
        """The last turn's text ("" before any turn): the episode's answer."""
        return self.turns[-1].text if self.turns else ""


@runtime_checkable
class Episode(Protocol):
    """One episode's state on the environment's side (made by :meth:`Environment.start`).

    Attributes:
        prompt: the first message the policy reads (usually the example's text).
        tools: the tools the policy may call in this episode (may be empty).
    """

    prompt: str
    tools: Sequence[Tool]

    async def step(self, turn: PolicyTurn, results: Sequence[ToolResult]) -> Reply:
        """Answer the policy's turn ``turn`` (whose calls gave ``results``): a message, a
        reward for the turn, and whether the episode is over. Raising fails the episode."""
        ...

    async def finish(self, record: EpisodeRecord) -> float:
        """The reward at the end, given the whole episode (``record.ended`` says why it
        ended; called for every episode that did not fail). Raising fails the episode."""
        ...

    async def aclose(self) -> None:
        """Release what the episode holds (always called, also after a failure)."""
        ...


@runtime_checkable
class Environment(Protocol):
    """Makes episodes: one per rollout, G per prompt (groups are unchanged).

    Attributes:
        name: the environment's name (recorded in every episode).
    """

    name: str

    async def start(self, example: Example) -> Episode:
        """A fresh episode of ``example``. Raising fails the episode."""
        ...


@runtime_checkable
class Conversation(Protocol):
    """One episode's exchange with the policy; :func:`~engine.environments.runner.run_episode`
    drives it: ``generate``, then ``add_reply`` after every turn that goes on, then
    ``sample`` once at the end.

    Implementations: :class:`~engine.environments.chat.EndpointConversation` (chat tools or
    the text protocol through the endpoint client) and the token conversation of a
    :class:`~engine.policies.base.TurnPolicy` (``engine.environments.tokens``:
    ``token_conversation(policy, snapshot, example, rng, *, greedy, tools) -> Conversation``,
    text protocol, one Sample with a loss mask).

    Attributes:
        tokens: the context's size now, in tokens (the first prompt, every turn and every
            reply so far; an estimate where the exact count is unknown).
        embedded: generation runs in-process: the runner records one request event per turn
            (an endpoint conversation's client records its own).
    """

    tokens: int
    embedded: bool

    async def generate(self, turn: int, *, max_tokens: int | None) -> TurnOutput:
        """The policy's turn ``turn``, at most ``max_tokens`` new tokens (None: its own
        setting). Raises :class:`~engine.errors.EngineError` when generation failed."""
        ...

    def add_reply(
        self, turn: TurnOutput, results: Sequence[ToolResult], message: str | None
    ) -> None:
        """Append the environment's answer to turn ``turn`` to the context: the tool
        results (in call order) then the message, if any."""
        ...

    def sample(self, record: EpisodeRecord) -> Sample:
        """The finished episode as one Sample: ``text`` the last turn's text, ``episode``
        the record (the runner sets ``error`` when it failed)."""
        ...
