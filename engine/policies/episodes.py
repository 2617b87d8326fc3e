"""What an endpoint policy gives a multi-turn episode: its one action and the first prompt.

An endpoint policy (the prompt policy) does not generate an episode's turns itself: the
episode runner (:mod:`engine.environments.runner`) sends every turn through the policy's
client. What the policy decides is taken once per episode, in :meth:`EpisodePolicy.open_episode`:
the rendered first prompt, the sampling temperature, and the fields of the episode's
:class:`~engine.types.Sample` that carry the policy's action (the prompt policy: the
candidate drawn and its behaviour log-probability), so GRPO over the policy's actions works on
episodes as on single completions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..types import Example, Sample
from .base import CompletionClient, PolicySnapshot

__all__ = ("EpisodeOpening", "EpisodePolicy")


@dataclass(frozen=True, slots=True)
class EpisodeOpening:
    """The start of one episode of an endpoint policy.

    Attributes:
        prompt: the first request: a completions prompt, or chat messages.
        mode: the endpoint mode every turn is sent in.
        policy_version: the snapshot's version (recorded in the turns' events).
        temperature: the sampling temperature of every turn; None: the endpoint's.
        stop: stop sequences of the policy's own format (completions mode), added to the
            text protocol's.
        fields: set on the episode's Sample (its ``choice``, ``logprobs``...).
        sample_type: the Sample class to build (a policy's subclass).
    """

    prompt: str | Sequence[Mapping[str, Any]]
    mode: Literal["chat", "completions"]
    policy_version: int
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    sample_type: type[Sample] = Sample


@runtime_checkable
class EpisodePolicy(Protocol):
    """An endpoint policy whose episodes the runner drives through ``client``."""

    client: CompletionClient | None

    def open_episode(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> EpisodeOpening:
        """Take the policy's action for one episode of ``example`` (drawn with ``rng``, the
        most probable one when ``greedy``) and render its first prompt."""
        ...
