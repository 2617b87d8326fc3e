"""Episodes of token policies: the policy's side of a multi-turn episode in token ids.

A :class:`~engine.policies.base.TurnPolicy` (the embedded LM, the torch policy) generates
each turn from the token ids of the whole episode so far, in the text protocol
(:mod:`engine.environments.text_protocol`): generation stops at ``</tool_call>``, the turn's
calls are parsed from its text, and the environment's answer (the ``<tool_result>`` lines and
its message, :func:`~engine.environments.text_protocol.render_reply`) is encoded by the
policy's tokenizer and appended to the context; then the policy continues. The runner
(:class:`~engine.environments.runner.EpisodeRunner`) drives a :class:`TokenConversation` like
any other :class:`~engine.environments.base.Conversation`: it calls :func:`token_conversation`
for every episode of a :class:`~engine.policies.base.TurnPolicy` (the runner depends on this
module, never the other way), so one episode of a token policy is
``EpisodeRunner(env, limits, protocol="text").run(policy, snapshot, example, rng)``.

**Training: ONE sequence with a mask.** The finished episode is one
:class:`~engine.types.Sample`: ``prompt_ids`` the first prompt; ``token_ids`` every token
after it, the policy's turns and the environment's replies in order, exactly the ids the
policy conditioned on (never re-tokenized text); ``logprobs`` aligned with them, the behaviour
policy's for its own tokens and NaN for the environment's; ``loss_mask`` 1 on the policy's
tokens and 0 on the environment's. The policies' updates condition on every token and take the
loss (policy gradient, KL, entropy, clip ratio and the token counts of the aggregation) over
the masked-in tokens only, so the environment's tokens are context and carry no loss. One
sequence rather than one sample per turn: each policy token is trained once, in the context it
was sampled in, with the episode's advantage, and one forward pass covers the episode.

A turn cut by its token cap inside a call leaves the call open; its closing tag is then put
back as environment tokens before the reply (the context reads as
:func:`~engine.environments.text_protocol.closed_turn` says).

Example::

    runner = EpisodeRunner(CalculatorEnvironment(), EpisodeLimits(max_turns=4), protocol="text")
    sample = await runner.run(policy, policy.snapshot(0), example, np.random.default_rng(0))
    sample.episode.ended, sample.loss_mask.sum()        # why it ended; the policy's tokens
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np

from ..policies.base import PolicySnapshot, TurnPolicy
from ..types import Example, Sample, Usage
from . import text_protocol
from .base import EpisodeRecord, Tool, ToolResult, TurnOutput

__all__ = ("DEFAULT_TURN_TOKENS", "TokenConversation", "token_conversation")

DEFAULT_TURN_TOKENS: Final = 64
"""A turn's token cap when neither the limits nor the policy (``max_new_tokens``) set one."""


class TokenConversation:
    """One episode's exchange with a :class:`~engine.policies.base.TurnPolicy` in token ids
    (module docstring); made by :func:`token_conversation`.

    Attributes:
        policy: the token policy.
        snapshot: the version every turn is generated from.
        prompt_ids: the first prompt's ids.
        tokens: the context's size now: the first prompt, every turn and every reply.
        embedded: True (the runner records each turn as a request event).
    """

    embedded = True

    def __init__(
        self,
        policy: TurnPolicy,
        snapshot: PolicySnapshot,
        example: Example,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
        tools: Sequence[Tool] = (),
    ) -> None:
        self.policy = policy
        self.snapshot = snapshot
        self.example = example
        self.tools = tuple(tools)
        self._rng = rng
        self._greedy = greedy
        self.prompt_ids = np.asarray(policy.prompt_ids(example), dtype=np.int64)
        self._ids: list[np.ndarray] = []
        self._logprobs: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._latency = 0.0
        self._finish = "stop"
        self.tokens = len(self.prompt_ids)

    def _context(self) -> np.ndarray:
        return np.concatenate([self.prompt_ids, *self._ids]) if self._ids else self.prompt_ids

    def _turn_cap(self, max_tokens: int | None) -> int:
        if max_tokens is not None:
            return max_tokens
        own = getattr(self.policy, "max_new_tokens", None)
        return own if isinstance(own, int) and own > 0 else DEFAULT_TURN_TOKENS

    async def generate(self, turn: int, *, max_tokens: int | None) -> TurnOutput:
        """The policy's turn ``turn`` from the context so far: at most ``max_tokens`` new
        tokens (None: the policy's ``max_new_tokens``), stopping at ``</tool_call>``; its
        tokens join the context with mask 1."""
        s = await self.policy.generate_turn(
            self.snapshot,
            self._context(),
            self._rng,
            stop=text_protocol.STOP,
            max_tokens=self._turn_cap(max_tokens),
            greedy=self._greedy,
        )
        if s.token_ids is None or s.logprobs is None or len(s.token_ids) != len(s.logprobs):
            raise ValueError("the policy's turn lacks aligned token ids and logprobs")
        ids = np.asarray(s.token_ids, dtype=np.int64)
        self._ids.append(ids)
        self._logprobs.append(np.asarray(s.logprobs, dtype=np.float64))
        self._mask.append(np.ones(len(ids), dtype=bool))
        self.tokens += len(ids)
        self._latency += s.latency
        self._finish = s.finish_reason
        return TurnOutput(
            text=s.text,
            tool_calls=text_protocol.parse_calls(s.text, turn),
            finish_reason=s.finish_reason,
            usage=s.usage,
            latency=s.latency,
        )

    def add_reply(
        self, turn: TurnOutput, results: Sequence[ToolResult], message: str | None
    ) -> None:
        """Append the environment's answer (a call left open closed first, then the results
        and the message as :func:`~engine.environments.text_protocol.render_reply` writes
        them) as the policy's tokenizer encodes it: mask 0, logprobs NaN."""
        closed = text_protocol.closed_turn(turn.text)
        text = closed[len(turn.text) :] + text_protocol.render_reply(results, message)
        if not text:
            return
        ids = np.asarray(self.policy.encode(text), dtype=np.int64)
        self._ids.append(ids)
        self._logprobs.append(np.full(len(ids), math.nan))
        self._mask.append(np.zeros(len(ids), dtype=bool))
        self.tokens += len(ids)

    def sample(self, record: EpisodeRecord) -> Sample:
        """The finished episode as ONE sample with its loss mask (module docstring); ``text``
        the last turn's. An episode without a policy token (its first prompt filled
        ``max_tokens``) carries ``error``: there is nothing to train."""
        empty = np.zeros(0, dtype=np.int64)
        ids = np.concatenate(self._ids) if self._ids else empty
        mask = np.concatenate(self._mask) if self._mask else np.zeros(0, dtype=bool)
        usage = record.usage
        return Sample(
            text=record.answer,
            prompt=self.example.text,
            token_ids=ids,
            logprobs=np.concatenate(self._logprobs) if self._logprobs else np.zeros(0),
            prompt_ids=self.prompt_ids.copy(),
            finish_reason=self._finish,
            usage=Usage(
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=int(mask.sum()),
                cost=usage.cost,
            ),
            latency=self._latency,
            error=None if mask.any() else _no_token(record, len(self.prompt_ids)),
            episode=record,
            loss_mask=mask,
        )


def _no_token(record: EpisodeRecord, prompt_tokens: int) -> str:
    why = f" (ended: {record.ended}; the first prompt is {prompt_tokens} tokens)"
    return "the episode has no token of the policy to train" + why


def token_conversation(
    policy: TurnPolicy,
    snapshot: PolicySnapshot,
    example: Example,
    rng: np.random.Generator,
    *,
    greedy: bool = False,
    tools: Sequence[Tool] = (),
) -> TokenConversation:
    """The policy's side of one episode of ``example`` (whose text is the first prompt, the
    text protocol's tool instructions included: the runner puts them there).

    Raises:
        ValueError: the policy cannot encode the prompt.
    """
    return TokenConversation(policy, snapshot, example, rng, greedy=greedy, tools=tools)
