"""The ``Policy`` protocol: the only surface the trainer and the learner see of a policy.

A policy owns trainable parameters (numpy arrays, updated in place by the learner's
optimizer), can freeze them into an immutable :class:`PolicySnapshot` that generation uses,
generates samples for one prompt from a snapshot, and computes the GRPO loss and its gradient
for a list of rollouts with advantages. Its whole state goes to and from plain arrays and JSON
data, so checkpoints never hold code.

Lifecycle, as driven by :mod:`engine.learning.learner`::

    snap = policy.snapshot(version=0)                    # generation uses snapshots only
    samples = await policy.generate(snap, example, n=G, rng=rng)
    ...  # rewards, advantages
    metrics, grads = policy.loss_and_grad(rollouts, advantages, grpo_cfg)   # worker thread
    optimizer.step(policy.parameters(), grads)                             # in place

Optional extras a policy may define (the trainer looks them up with ``getattr``):

- ``embedded: bool``: generation runs in-process; the trainer then records one request event
  per group itself (an HTTP policy's client records its own).
- ``async after_update(step, groups, *, version, optimizer) -> dict | None``: called in the
  learner's task after each update (no race with parameter updates); the prompt policy grows
  and prunes its candidates here; returned metrics join the step's metrics line.
- ``live_snapshot()``: a snapshot of the current parameters for serving outside training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config.schema import GRPOConfig
from ..types import Example, Rollout, Sample

__all__ = ("Policy", "PolicySnapshot")


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Frozen parameters of one policy version; safe to use from any task or thread."""

    version: int
    params: Mapping[str, np.ndarray]


@runtime_checkable
class Policy(Protocol):
    """What a trainable policy provides. See the module docstring for the lifecycle."""

    name: str

    def parameters(self) -> dict[str, np.ndarray]:
        """The live trainable arrays; the optimizer updates them in place."""
        ...

    def snapshot(self, version: int) -> PolicySnapshot:
        """A frozen copy of the current parameters, labelled with ``version``."""
        ...

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

    def loss_and_grad(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, cfg: GRPOConfig
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """GRPO loss metrics and the gradient of the loss for each parameter.

        ``advantages`` has shape (N,) aligned with ``rollouts``; every rollout is valid (failed
        ones were filtered by the learner). Runs in a worker thread; must not mutate parameters.
        Metrics include at least ``policy_loss``, ``kl``, ``entropy``, ``clip_ratio``.
        """
        ...

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to restore the policy: arrays and JSON-able metadata."""
        ...

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore from :meth:`state` output; raises CheckpointError when incompatible."""
        ...
