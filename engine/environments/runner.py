"""The episode runner: G episodes per prompt instead of G completions, scored by the environment.

The rollout stage (:class:`~engine.rollout.groups.GroupRunner`) hands generation to an
:class:`EpisodeRunner` when ``[environment]`` names one; groups are unchanged otherwise: a
group is G episodes of one prompt (run side by side), advantages are taken over the episodes'
rewards, and a failed episode is a failed rollout (masked, re-requested or dropped by the
``[rollout]`` policy), never a reward of 0::

    runner = EpisodeRunner(CalculatorEnvironment(), EpisodeLimits(max_turns=4), events=events)
    samples = await runner.generate(policy, snapshot, example, n=8, rng=rng)
    scores = [episode_score(s) for s in samples]     # rewards from the episodes' records

One episode (:meth:`EpisodeRunner.run`, semantics in :mod:`engine.environments.base`):

1. ``environment.start(example)`` makes the episode (its tools, its first prompt);
2. the policy's side is a :class:`~engine.environments.base.Conversation`: for a token policy
   (:class:`~engine.policies.base.TurnPolicy`) the tokens helper's ``token_conversation``, for
   an endpoint policy (:class:`~engine.policies.episodes.EpisodePolicy`) an
   :class:`~engine.environments.chat.EndpointConversation` whose every turn is one request
   through the policy's client (its limits, retries and events apply per turn);
3. :func:`run_turns` alternates the policy's turns and the environment's replies until done,
   ``max_turns``, ``max_tokens`` or the deadline (the whole episode, tools included, runs
   under one cancel scope of ``deadline`` seconds);
4. ``episode.finish(record)`` gives the reward at the end (for every episode that did not
   fail, cut by a limit or not); ``episode.aclose()`` always runs.

**Tool protocol** (``environment.tools``): ``chat`` sends OpenAI ``tools`` (chat mode only);
``text`` uses the tag protocol (:mod:`~engine.environments.text_protocol`), whose
instructions are put before the episode's first prompt; ``auto`` is ``chat`` for a chat-mode
endpoint policy and ``text`` otherwise (completions mode, token policies).

**Events.** Every turn's request carries ``episode`` (``<group_id>.<n>``) and ``turn``:
the client writes them into its per-attempt events; for an embedded policy the runner
records one ``generation`` event per turn itself.

**Metrics.** :func:`tally_episode` counts each finished episode by why it ended
(``episodes/done``, ``episodes/max_turns``, ``episodes/deadline``, ``episodes/max_tokens``,
``episodes/error``), with ``episodes/turns``, ``episodes/tool_calls``,
``episodes/malformed_calls`` and ``episodes/tool_errors`` (the rollout counters of a batch).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
import numpy as np
import structlog

from ..errors import ConfigError
from ..policies import base as policy_base
from ..policies.base import Policy, PolicySnapshot
from ..policies.episodes import EpisodePolicy
from ..rewards.rewarder import Score
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from ..types import Example, Sample
from . import text_protocol
from .base import (
    END_REASONS,
    Conversation,
    Environment,
    Episode,
    EpisodeLimits,
    EpisodeRecord,
    PolicyTurn,
    Tool,
    TurnOutput,
    TurnRecord,
)
from .chat import EndpointConversation
from .tools import run_calls

if TYPE_CHECKING:
    from ..config.sections import RunConfig

__all__ = (
    "EpisodeRunner",
    "ToolProtocol",
    "episode_score",
    "run_turns",
    "tally_episode",
)

_log = get_logger("engine.environments.runner")

ToolProtocol = Literal["auto", "chat", "text"]
"""``environment.tools``: see the module docstring."""


class EpisodeRunner:
    """Runs episodes of one environment against any policy that can take turns.

    Args:
        environment: makes the episodes.
        limits: per episode: turns, deadline, tokens; None: ``EpisodeLimits()``.
        protocol: how tool calls travel (module docstring).
        events: where an embedded policy's turns are recorded as request events.

    Attributes:
        environment: the environment.
        limits: the per-episode limits.
        protocol: the configured tool protocol.
    """

    def __init__(
        self,
        environment: Environment,
        limits: EpisodeLimits | None = None,
        *,
        protocol: ToolProtocol = "auto",
        events: EventLog | None = None,
    ) -> None:
        self.environment = environment
        self.limits = limits or EpisodeLimits()
        self.protocol: ToolProtocol = protocol
        self.events = events
        self._seq = 0

    @classmethod
    def from_config(
        cls, config: RunConfig, *, events: EventLog | None = None
    ) -> EpisodeRunner | None:
        """The runner of ``[environment]``; None when it names no environment.

        Raises:
            ConfigError: the environment cannot be made (unknown name, bad import path).
        """
        section = config.environment
        if not section.name:
            return None
        from .registry import make_environment  # the built-ins import their own modules

        limits = EpisodeLimits(
            max_turns=section.max_turns,
            deadline=section.deadline or None,
            max_tokens=section.max_tokens or None,
        )
        return cls(make_environment(section.name), limits, protocol=section.tools, events=events)

    # ------------------------------------------------------------------ policies

    def check(self, policy: Policy) -> None:
        """Raise at once when ``policy`` cannot run this runner's episodes.

        Raises:
            ConfigError: neither a token policy nor an endpoint policy with a client, or the
                chat tool protocol where the policy cannot use it.
        """
        turn_policy = getattr(policy_base, "TurnPolicy", None)
        if turn_policy is not None and isinstance(policy, turn_policy):
            if self.protocol == "chat":
                raise ConfigError(
                    f"policy {policy.name!r} takes turns as tokens: use environment.tools = "
                    '"text" or "auto"',
                    key="environment.tools",
                )
            return
        if isinstance(policy, EpisodePolicy) and policy.client is not None:
            return
        raise ConfigError(
            f"policy {policy.name!r} cannot run multi-turn episodes: it is neither a token "
            "policy (TurnPolicy) nor an endpoint policy with a client",
            key="environment.name",
        )

    def _conversation(
        self,
        policy: Policy,
        snapshot: PolicySnapshot,
        example: Example,
        rng: np.random.Generator,
        greedy: bool,
        tools: Sequence[Tool],
        episode_id: str,
    ) -> Conversation:
        """The policy's side of one episode; ``example`` carries the first prompt."""
        turn_policy = getattr(policy_base, "TurnPolicy", None)
        if turn_policy is not None and isinstance(policy, turn_policy):
            try:
                from .tokens import token_conversation  # type: ignore[attr-defined]
            except ImportError as exc:  # the token side is not built in this tree
                raise ConfigError(
                    f"episodes of token policies need engine.environments.tokens: {exc}",
                    key="environment.name",
                ) from None
            conv: Conversation = token_conversation(
                policy, snapshot, example, rng, greedy=greedy, tools=tools
            )
            return conv
        if not isinstance(policy, EpisodePolicy) or policy.client is None:
            self.check(policy)  # raises
        assert isinstance(policy, EpisodePolicy) and policy.client is not None
        opening = policy.open_episode(snapshot, example, rng, greedy=greedy)
        protocol = self._endpoint_protocol(opening.mode)
        seed = int(rng.integers(0, 2**31 - 1 - self.limits.max_turns))
        return EndpointConversation(
            policy.client, opening, protocol=protocol, tools=tools,
            episode_id=episode_id, seed=seed,
        )  # fmt: skip

    def _endpoint_protocol(self, mode: str) -> Literal["chat", "text"]:
        if self.protocol == "auto":
            return "chat" if mode == "chat" else "text"
        if self.protocol == "chat" and mode != "chat":
            raise ConfigError(
                'environment.tools = "chat" needs endpoint.mode = "chat"; completions mode '
                'uses the text protocol ("text" or "auto")',
                key="environment.tools",
            )
        return self.protocol

    def _uses_text(self, policy: Policy) -> bool:
        """Whether this policy's episodes use the text protocol."""
        if self.protocol != "auto":
            return self.protocol == "text"
        mode = getattr(getattr(policy, "endpoint", None), "mode", None)
        if mode is None:
            mode = getattr(policy, "mode", None)
        return not (isinstance(policy, EpisodePolicy) and mode == "chat")

    # ------------------------------------------------------------------ episodes

    async def generate(
        self,
        policy: Policy,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """``n`` episodes of ``example``, side by side; episode ``i`` draws from a child of
        ``rng``'s seed sequence (:func:`_child`), so it does not depend on the others. Every
        sample carries its :class:`~engine.environments.base.EpisodeRecord`; failed episodes
        carry ``error``. Raises only for cancellation and configuration errors."""
        out: list[Sample | None] = [None] * n

        async def one(i: int) -> None:
            out[i] = await self.run(policy, snapshot, example, _child(rng, i), greedy=greedy)

        if n == 1:
            await one(0)
        else:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        return [s for s in out if s is not None]

    def _next_id(self) -> str:
        group = structlog.contextvars.get_contextvars().get("group_id")
        self._seq += 1
        return f"{group or 'episode'}.{self._seq}"

    async def run(
        self,
        policy: Policy,
        snapshot: PolicySnapshot,
        example: Example,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> Sample:
        """One episode of ``example`` (module docstring); its Sample, ``error`` set when the
        episode failed."""
        episode_id = self._next_id()
        record = EpisodeRecord(episode_id, self.environment.name)
        t0 = time.monotonic()
        episode: Episode | None = None
        conversation: Conversation | None = None
        deadline = self.limits.deadline
        try:
            with anyio.move_on_after(math.inf if deadline is None else deadline) as scope:
                episode = await self.environment.start(example)
                first = _first_example(example, episode, self._uses_text(policy))
                conversation = self._conversation(
                    policy, snapshot, first, rng, greedy, episode.tools, episode_id
                )
                await run_turns(
                    conversation, episode, self.limits, record,
                    events=self.events, model=policy.name, policy_version=snapshot.version,
                )  # fmt: skip
            if scope.cancelled_caught:
                record.ended = "deadline"
            if episode is None or conversation is None:
                raise TimeoutError(f"the deadline ({deadline} s) passed before the first turn")
            final = float(await episode.finish(record))
            if not math.isfinite(final):
                raise ValueError(f"the environment's final reward is {final}")
            record.final_reward = final
        except ConfigError:
            raise
        except Exception as exc:  # the episode failed: recorded, masked, never a reward of 0
            record.error = f"{type(exc).__name__}: {exc}"
            record.ended = "error"
        finally:
            if episode is not None:
                with anyio.CancelScope(shield=True):
                    await _close(episode, episode_id)
        record.seconds = time.monotonic() - t0
        if conversation is None:
            return Sample(text="", prompt=example.text, error=record.error, episode=record)
        record.tokens = conversation.tokens
        sample = conversation.sample(record)
        sample.episode = record
        if record.error is not None:
            sample.error = record.error
        _log.debug("episode.end", episode=episode_id, ended=record.ended,
                   turns=len(record.turns), reward=record.reward)  # fmt: skip
        return sample


async def run_turns(
    conversation: Conversation,
    episode: Episode,
    limits: EpisodeLimits,
    record: EpisodeRecord,
    *,
    events: EventLog | None = None,
    model: str = "",
    policy_version: int | None = None,
) -> None:
    """Alternate the policy's turns and the environment's replies into ``record`` until the
    episode is done or a turn or token limit is reached (``record.ended`` says which).

    A turn: the policy generates (at most what ``limits.max_tokens`` leaves of the context,
    and ``limits.turn_max_tokens``); its calls run concurrently; the environment answers the
    turn and its results. Done when the environment says so, or when the turn made no call
    and the environment had no message. ``max_turns`` ends it after the last allowed turn's
    answer; ``max_tokens`` when the context is full before a turn or after a reply.

    Raises:
        Exception: whatever the conversation or the environment raised (the caller records
            the episode as failed).
    """
    tools = episode.tools
    for t in range(limits.max_turns):
        cap = limits.turn_max_tokens
        if limits.max_tokens is not None:
            left = limits.max_tokens - conversation.tokens
            if left <= 0:
                record.ended = "max_tokens"
                return
            cap = left if cap is None else min(cap, left)
        out = await _generate(conversation, t, cap, events, record.id, model, policy_version)
        results = await run_calls(tools, out.tool_calls) if out.tool_calls else []
        turn = PolicyTurn(t, out.text, out.tool_calls, out.finish_reason)
        reply = await episode.step(turn, results)
        reward = None if reply.reward is None else float(reply.reward)
        if reward is not None and not math.isfinite(reward):
            raise ValueError(f"the environment's reward for turn {t} is {reward}")
        taken = TurnRecord(t, out.text, out.tool_calls, tuple(results), reply.message, reward,
                           out.finish_reason, out.usage, out.latency)  # fmt: skip
        record.turns.append(taken)
        if reply.done or (not out.tool_calls and not reply.message):
            record.ended = "done"
            return
        if t == limits.max_turns - 1:
            record.ended = "max_turns"
            return
        conversation.add_reply(out, results, reply.message)
        if limits.max_tokens is not None and conversation.tokens >= limits.max_tokens:
            record.ended = "max_tokens"
            return


async def _generate(
    conversation: Conversation,
    turn: int,
    cap: int | None,
    events: EventLog | None,
    episode_id: str,
    model: str,
    policy_version: int | None,
) -> TurnOutput:
    """One policy turn; an embedded conversation's turn is recorded as a request event."""
    if not conversation.embedded or events is None:
        return await conversation.generate(turn, max_tokens=cap)
    t0 = time.perf_counter()
    out: TurnOutput | None = None
    try:
        with events.track("generation"):
            out = await conversation.generate(turn, max_tokens=cap)
        return out
    finally:
        group = structlog.contextvars.get_contextvars().get("group_id")
        events.emit(
            kind="generation", endpoint="embedded", model=model, group_id=group,
            policy_version=policy_version, status=200 if out is not None else None,
            latency=time.perf_counter() - t0, attempt=1, n=1,
            prompt_tokens=out.usage.prompt_tokens if out is not None else 0,
            completion_tokens=out.usage.completion_tokens if out is not None else 0,
            error_class=None if out is not None else "embedded",
            episode=episode_id, turn=turn,
        )  # fmt: skip


async def _close(episode: Episode, episode_id: str) -> None:
    try:
        await episode.aclose()
    except Exception as exc:  # a leak to report, not a reason to lose the episode
        why = f"{type(exc).__name__}: {exc}"
        _log.warning("episode.close_failed", episode=episode_id, error=why)


def _first_example(example: Example, episode: Episode, text: bool) -> Example:
    """The example the policy renders its first prompt from: the episode's prompt, after
    the text protocol's tool instructions when the policy calls tools in text."""
    prompt = episode.prompt
    if text and episode.tools:
        prompt = f"{text_protocol.instructions(episode.tools)}\n\n{prompt}"
    if prompt == example.text:
        return example
    return dataclasses.replace(example, text=prompt, inputs={**example.inputs, "text": prompt})


def _child(rng: np.random.Generator, i: int) -> np.random.Generator:
    """Episode ``i``'s generator: a child of ``rng``'s seed sequence (pure: ``rng`` is left
    as it was), or one seeded from ``rng`` when it has no seed sequence."""
    ss = getattr(rng.bit_generator, "seed_seq", None)
    if isinstance(ss, np.random.SeedSequence):
        key = (*ss.spawn_key, 0xE915, i)
        return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=key))
    return np.random.default_rng(int(rng.integers(0, 2**63 - 1)))


def episode_score(sample: Sample) -> Score:
    """The rollout's score of an episode: its reward (the final reward plus the turns'),
    parts ``<environment>`` (the final reward) and ``turns`` (their sum, when any turn had
    one); NaN with the error when the episode failed."""
    record: EpisodeRecord | None = sample.episode
    if record is None:
        raise ValueError("the sample is not an episode's")
    error = sample.error or record.error
    if error is not None:
        return Score(math.nan, {}, error)
    parts = {record.environment: record.final_reward}
    turn_rewards = [t.reward for t in record.turns if t.reward is not None]
    if turn_rewards:
        parts["turns"] = float(sum(turn_rewards))
    return Score(record.reward, parts)


def tally_episode(counts: Counter[str], record: Any) -> None:
    """Count one finished episode into ``counts`` (keys without the ``episodes/`` prefix:
    each end reason, ``turns``, ``tool_calls``, ``malformed_calls``, ``tool_errors``)."""
    if not isinstance(record, EpisodeRecord):
        return
    counts[record.ended] += 1
    counts["turns"] += len(record.turns)
    counts["tool_calls"] += record.tool_calls
    counts["malformed_calls"] += record.malformed_calls
    counts["tool_errors"] += record.tool_errors


def episode_metrics(counts: Counter[str]) -> dict[str, int]:
    """``episodes/<key>`` for every end reason (0 when none ended so) and every count, when
    any episode was counted; ``{}`` otherwise."""
    if not any(counts[r] for r in END_REASONS):
        return {}
    keys = (*END_REASONS, "turns", "tool_calls", "malformed_calls", "tool_errors")
    return {f"episodes/{k}": int(counts[k]) for k in keys}
