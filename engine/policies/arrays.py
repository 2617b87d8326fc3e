"""The update side of the ``Policy`` protocol for policies whose parameters are numpy arrays.

Such a policy computes its loss and exact gradient itself (:meth:`ArrayPolicy.loss_and_grad`);
this base class owns the :class:`~engine.policies.optim.Adam` that applies it, so an update is
``loss_and_grad`` then one Adam step on ``parameters()``, and the optimizer's moments go into
checkpoints as ``m.<name>`` / ``v.<name>`` arrays beside ``{"t": t}``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..config.sections import GRPOConfig, OptimConfig
from ..types import Rollout
from .base import Policy
from .optim import Adam

__all__ = ("ArrayPolicy",)


class ArrayPolicy(Policy):
    """A :class:`~engine.policies.base.Policy` trained by numpy gradients and Adam.

    Subclasses provide :meth:`parameters` and :meth:`loss_and_grad`.

    Attributes:
        optimizer: the Adam(W) of :meth:`configure_optimizer`; None before it.
    """

    optimizer: Adam | None = None

    @abstractmethod
    def parameters(self) -> dict[str, np.ndarray]:
        """The live trainable arrays; the optimizer updates them in place."""

    @abstractmethod
    def loss_and_grad(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, grpo: GRPOConfig
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """GRPO loss metrics and the gradient of the loss for each parameter (same keys and
        shapes as :meth:`parameters`); must not mutate parameters."""

    def configure_optimizer(self, optim: OptimConfig) -> None:
        """A fresh Adam(W) with these hyperparameters."""
        self.optimizer = Adam(optim)

    def update(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, *, grpo: GRPOConfig, lr: float
    ) -> dict[str, float]:
        """:meth:`loss_and_grad`, then one Adam step at ``lr``; the loss metrics and Adam's
        ``grad_norm``, ``grad_norm_clipped`` and ``update_norm``."""
        optimizer = self._optimizer()
        metrics, grads = self.loss_and_grad(rollouts, advantages, grpo)
        metrics.update(optimizer.step(self.parameters(), grads, lr))
        return metrics

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Adam's moments and step count (:meth:`Adam.state`)."""
        return self._optimizer().state()

    def load_optimizer_state(
        self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> None:
        """Restore :meth:`optimizer_state` output (:meth:`Adam.load_state`)."""
        self._optimizer().load_state(arrays, meta)

    def _optimizer(self) -> Adam:
        if self.optimizer is None:
            raise RuntimeError(f"the {self.name} policy has no optimizer: configure_optimizer()")
        return self.optimizer
