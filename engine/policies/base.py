"""The ``Policy`` protocol: the only surface the trainer and the learner see of a policy.

A policy owns its trainable parameters and its optimizer, can freeze its parameters into an
immutable :class:`PolicySnapshot` that generation uses, generates samples for one prompt from a
snapshot, and takes an optimizer step on the GRPO loss (:mod:`engine.policies.objective`) of a
mini-batch of rollouts with advantages. Its whole state, optimizer included, goes to and from
plain arrays and JSON data, so checkpoints never hold code.

Lifecycle, as driven by :mod:`engine.learning.learner` and the trainer::

    policy.configure_optimizer(config.optim)             # once, by the learner
    snap = policy.snapshot(version=0)                    # generation uses snapshots only
    samples = await policy.generate(snap, example, n=G, rng=rng)
    ...  # rewards, advantages
    metrics = policy.update(rollouts, advantages, grpo=grpo, lr=lr)  # worker thread
    extra = await policy.after_update(step, groups, version=v)        # learner's task

The learner owns what is not the policy's: staleness, advantages, versions, the snapshots
generation may still ask for, and the learning-rate schedule.

Members with a default here (``embedded``, ``client``, :meth:`Policy.after_update`,
:meth:`Policy.live_snapshot`) are inherited by a policy that subclasses :class:`Policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..config.sections import GRPOConfig, OptimConfig
from ..types import Example, Group, Rollout, Sample

if TYPE_CHECKING:
    from ..endpoints.parsing import Completion

__all__ = ("CompletionClient", "Policy", "PolicySnapshot", "TurnPolicy")


class CompletionClient(Protocol):
    """What a policy needs of :class:`engine.endpoints.client.Client`."""

    async def complete(
        self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> Completion: ...


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Frozen parameters of one policy version; safe to use from any task or thread."""

    version: int
    params: Mapping[str, np.ndarray]


@runtime_checkable
class Policy(Protocol):
    """What a trainable policy provides. See the module docstring for the lifecycle.

    Attributes:
        name: the policy kind (``tinylm``, ``prompt``), checked by checkpoints.
        embedded: generation runs in-process; the rollout stage then records one request
            event per group itself (an endpoint policy's client records its own).
        client: the endpoint client generation goes through (the rollout stage sizes its
            admission gate from its limits); None for in-process generation.
    """

    name: str
    embedded: bool = False
    client: CompletionClient | None = None

    def snapshot(self, version: int) -> PolicySnapshot:
        """A frozen copy of the current parameters, labelled with ``version``."""
        ...

    def live_snapshot(self) -> PolicySnapshot | None:
        """The policy as it is now, where that differs from every snapshot the learner
        published (the prompt policy's candidates added after an update); None when the
        learner's snapshots are the whole story (the default)."""
        return None

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """Sample ``n`` completions for ``example`` from ``snapshot`` (argmax when ``greedy``).

        Must not block the event loop (CPU work goes to a worker thread). Samples that failed
        carry ``error``; the call itself raises only for programming errors or cancellation.
        """
        ...

    def configure_optimizer(self, optim: OptimConfig) -> None:
        """Create the optimizer :meth:`update` steps with, from the run's hyperparameters."""
        ...

    def update(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, *, grpo: GRPOConfig, lr: float
    ) -> dict[str, float]:
        """One optimizer step on the GRPO loss of a mini-batch: loss, gradient, step.

        ``advantages`` has shape (N,) aligned with ``rollouts``; every rollout is valid (failed
        ones were filtered by the learner). ``lr`` is this step's learning rate. Runs in a
        worker thread, never concurrently with :meth:`generate`'s use of parameters (those read
        snapshots) or with :meth:`after_update`. Returns the metrics of the step: at least
        ``policy_loss``, ``kl``, ``entropy``, ``clip_ratio`` and ``grad_norm``.
        """
        ...

    async def after_update(
        self, step: int, groups: Sequence[Group], *, version: int
    ) -> dict[str, float]:
        """Called in the learner's task after the update of batch ``step`` was published as
        ``version`` (so never concurrently with :meth:`update`). Returns metrics for the
        step's line; the default does nothing."""
        return {}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to restore the policy but its optimizer: arrays and JSON data."""
        ...

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore from :meth:`state` output; raises CheckpointError when incompatible."""
        ...

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The optimizer's state as arrays and JSON data (empty before the first step)."""
        ...

    def load_optimizer_state(
        self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Restore :meth:`optimizer_state` output, after :meth:`configure_optimizer`; the
        next :meth:`update` continues exactly; raises CheckpointError when incompatible."""
        ...


@runtime_checkable
class TurnPolicy(Protocol):
    """A policy that trains tokens and can continue an episode turn by turn (multi-turn,
    tool-using rollouts; the runner drives it through
    :func:`engine.environments.tokens.token_conversation`).

    An episode is trained as ONE sequence with a mask: the first prompt is the sample's
    ``prompt_ids``; every token after it, the policy's turns and the environment's replies in
    order, is in ``token_ids``; ``Sample.loss_mask`` is 1 on the policy's own tokens and 0 on
    the environment's, whose ``logprobs`` are NaN. The update then conditions on every token
    but takes the loss (policy gradient, KL, entropy, clip ratio and the token counts of the
    aggregation) over the masked-in tokens only.
    """

    def prompt_ids(self, example: Example) -> np.ndarray:
        """The rendered first prompt of ``example`` as int64 token ids.

        Raises:
            ValueError: the prompt cannot be encoded by this policy's tokenizer.
        """
        ...

    def encode(self, text: str) -> np.ndarray:
        """Environment text (a tool result, feedback) as int64 token ids, without BOS."""
        ...

    async def generate_turn(
        self,
        snapshot: PolicySnapshot,
        context_ids: np.ndarray,
        rng: np.random.Generator,
        *,
        stop: Sequence[str],
        max_tokens: int,
        greedy: bool = False,
    ) -> Sample:
        """Continue ``context_ids`` (the prompt and the episode so far) with the policy's next
        turn from ``snapshot``: it ends at an end-of-sequence token, once its text contains
        any of ``stop`` (the stop string's tokens are kept), or after ``max_tokens`` tokens.

        Returns a sample of the NEW tokens only: ``token_ids``, their behaviour ``logprobs``
        (under the same distribution the update recomputes), ``text`` (the new tokens decoded,
        a stop string included, so a tool call is whole; an end-of-sequence token is not
        text), ``prompt_ids`` = ``context_ids`` and ``finish_reason`` (``stop`` at an
        end-of-sequence token or a stop string, ``length`` at ``max_tokens``). Must not block
        the event loop.
        """
        ...
