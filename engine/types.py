"""Plain data passed between stages: examples, samples, rollouts and groups.

The flow is one way: ``Example`` (data) -> ``Sample`` (policy generation) -> ``Rollout``
(sample + reward + identity) -> ``Group`` (G rollouts of one prompt, with advantages) -> learner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ("Example", "Group", "Rollout", "Sample", "ToolCall", "Usage", "new_usage")


@dataclass(frozen=True, slots=True)
class Example:
    """One prompt from a dataset.

    Attributes:
        id: stable identifier (``file:line`` for files, ``task-N`` for built-ins).
        text: the prompt text (a training example's ``input.text`` or a plain ``prompt``).
        inputs: all input fields (``{"text": ...}`` plus any others in the line).
        target: reference output when the dataset has one (``output.generated``).
        quality: reference quality when given (``output.quality``).
        meta: anything else from the line (``answer`` fields, task data).
    """

    id: str
    text: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None
    quality: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one or more requests; usages add up with ``+``.

    Attributes:
        prompt_tokens: tokens of the prompt, as the endpoint counted them.
        completion_tokens: tokens generated.
        cached_tokens: prompt tokens the endpoint served from its prompt cache.
        reasoning_tokens: completion tokens spent on hidden reasoning, where reported.
        cost: the usage's ``cost`` field in USD, where the endpoint reports a valid one
            (:func:`~engine.endpoints.spend.reported_cost`); None when it reports none.
            Summed usages have a cost when any part has one.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None

    def __add__(self, other: Usage) -> Usage:
        a, b = self.cost, other.cost
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            b if a is None else a if b is None else a + b,
        )

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


_SET_USAGE = tuple(
    getattr(Usage, f).__set__
    for f in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost")
)


def new_usage(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    cost: float | None = None,
) -> Usage:
    """``Usage(...)`` for the client's hot path: the same frozen object, its slots filled
    directly (a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about twice as slow; one is built per response)."""
    u = object.__new__(Usage)
    sp, sc, sca, sr, sco = _SET_USAGE
    sp(u, prompt_tokens)
    sc(u, completion_tokens)
    sca(u, cached_tokens)
    sr(u, reasoning_tokens)
    sco(u, cost)
    return u


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the policy made, as parsed from its turn (untrusted).

    Attributes:
        id: the call's id: the server's ``tool_calls[].id`` in chat mode (``call_<i>`` when
            it sent none), ``call_{turn}_{i}`` in the text protocol.
        name: the tool named ("" when the call named none).
        arguments: the arguments as the model wrote them: JSON text of an object.
        error: why the call is malformed (not an object, no name, bad JSON...), None when it
            is well formed; an unknown tool is found when the call is run.
    """

    id: str
    name: str
    arguments: str
    error: str | None = None


@dataclass(slots=True)
class Sample:
    """One completion produced by a policy, before it is scored.

    Attributes:
        text: the completion text.
        prompt: the rendered prompt that produced it.
        token_ids: completion token ids when known (embedded LM, vLLM).
        logprobs: per-token log-probabilities under the behaviour policy, when known.
        prompt_ids: prompt token ids when known (embedded LM).
        finish_reason: ``stop``, ``length``...
        usage: tokens spent on this sample (a share of the request when ``n`` > 1).
        latency: seconds the request took.
        choice: policy-specific choice made while sampling (the prompt candidate index).
        error: set when generation failed; the rollout is then masked from advantages.
        episode: the record of a multi-turn episode (an
            :class:`~engine.environments.base.EpisodeRecord`: its turns, per-turn rewards and
            why it ended) when the sample came from an environment; None for one completion.
        loss_mask: for a multi-turn episode of a token policy, (len(token_ids),) 1 where the
            token is the policy's own (trained), 0 where it is the environment's (context
            only, its logprob NaN); None: every completion token is trained.
    """

    text: str
    prompt: str = ""
    token_ids: np.ndarray | None = None
    logprobs: np.ndarray | None = None
    prompt_ids: np.ndarray | None = None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    latency: float = 0.0
    choice: int | None = None
    error: str | None = None
    episode: Any = None
    loss_mask: np.ndarray | None = None


@dataclass(slots=True)
class Rollout:
    """A scored sample with its identity: group, index in the group, policy version.

    ``reward`` is NaN when generation or scoring failed; such rollouts are masked from
    advantages (never counted as zero).

    Attributes:
        group_id: the group it belongs to (``STEP-J``).
        index: its position in the group.
        policy_version: the version of the policy that generated it.
        sample: the completion.
        reward: the combined reward, NaN when it failed.
        reward_parts: each reward function's and judge's score, by name.
        error: why generation or scoring failed, when it did.
        feedback: a judge's explanation, when one gave it.
        advantage: the advantage computed within its group, NaN until computed.
    """

    group_id: str
    index: int
    policy_version: int
    sample: Sample
    reward: float = math.nan
    reward_parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    feedback: str | None = None
    advantage: float = math.nan

    @property
    def ok(self) -> bool:
        """Scored without error: it takes part in advantages."""
        return self.error is None and math.isfinite(self.reward)


@dataclass(slots=True)
class Group:
    """G rollouts of one prompt, generated by one policy version.

    Attributes:
        group_id: ``STEP-J``: prompt ``J`` of batch ``STEP``.
        step: the batch it came from.
        example: the prompt.
        policy_version: the version of the policy that generated every rollout.
        rollouts: the rollouts, in index order.
    """

    group_id: str
    step: int
    example: Example
    policy_version: int
    rollouts: list[Rollout] = field(default_factory=list)

    def rewards(self) -> np.ndarray:
        """Rewards as a float array of shape (G,), NaN where a rollout failed."""
        return np.array([r.reward if r.ok else math.nan for r in self.rollouts], dtype=np.float64)

    @property
    def complete(self) -> bool:
        """Every rollout was scored without error."""
        return all(r.ok for r in self.rollouts)
