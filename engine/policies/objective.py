"""The GRPO objective, written once: per-action log-probabilities and advantages in; the loss
terms, ``dloss/dlogp`` and the step metrics out.

An *action* is whatever a policy's probability is differentiated over: a completion token for
:mod:`engine.policies.tinylm` (token-level GRPO), the candidate choice for the prompt policy
(one action per rollout). For action t of rollout i with advantage ``A_i``::

    logratio  = logp_new - logp_old           # logp_old: the behaviour policy's (Sample.logprobs)
    ratio     = exp(logratio)
    pg_loss1  = -A_i * ratio
    pg_loss2  = -A_i * clip(ratio, 1 - epsilon, 1 + (epsilon_high or epsilon))
    pg_loss   = max(pg_loss1, pg_loss2)       # the PPO/GRPO pessimistic clipped surrogate
    kl        = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1     # k3 estimator
    loss_t    = pg_loss + beta * kl - entropy_coef * H_t
    loss      = sum_t w_t * loss_t

``H_t`` is the entropy of the policy at action t when the caller gives one (the exact entropy of
the whole next-action distribution); without it the entropy term is absent. The weights ``w``
are the aggregation (:func:`sequence_weights`, ``GRPOConfig.loss_type``), with N rollouts, T_i
actions in rollout i and ``T_max`` the generation cap:

* ``grpo``: mean over the actions of each sequence, then mean over sequences (DeepSeekMath).
* ``dapo``: sum over all actions / their total count (DAPO's token-level mean).
* ``dr_grpo``: sum over all actions / (N * T_max), a fixed normalizer (Dr. GRPO).

With one action per rollout the three coincide (the mean over rollouts).

Truncated importance sampling (TIS), for samples drawn by another engine (a server's kernels or
quantization): the caller passes ``behaviour_logp`` (the server's log-probabilities of the
sampled tokens) and, as ``old_logp``, the trainer's own recomputation for the version that
generated them. Then the ratio is taken against the trainer's old log-probabilities and each
action's loss is multiplied by the importance weight of the two engines, truncated::

    is_weight = min(exp(logp_old - logp_behaviour), tis_cap)
    loss      = sum_t w_t * is_weight_t * loss_t

The weight is a constant of the loss (it folds into ``w``). Its metrics, the inference/trainer
mismatch: ``mismatch/abs_logp`` (mean ``|logp_old - logp_behaviour|``), ``mismatch/k3_kl`` (the
k3 estimate of KL(behaviour || trainer) from the behaviour's samples:
``r - 1 - log r`` with ``r = exp(logp_old - logp_behaviour)``), ``mismatch/capped`` (the share
of actions whose weight was truncated) and ``mismatch/is_weight`` (the mean weight). Without
``behaviour_logp`` nothing of this applies and the loss is exactly as above.

What is and is not as in the papers: the KL is a penalty in the loss with the k3 estimator
(DeepSeekMath), not a reward shaping term; clip-higher is DAPO's decoupled ``epsilon_high``;
advantages come from the caller (group-relative, with or without std scaling). There is no
value function: GRPO has none. The entropy bonus is an addition none of the three papers uses
(0 disables it).

The derivative of the loss with respect to each action's new log-probability is exact::

    d loss_t / d logp_new = (0 if clipped else -A_i * ratio) + beta * (1 - exp(logp_ref - logp_new))
    d loss   / d logp_new = w_t * d loss_t / d logp_new

A policy backpropagates it (and ``d loss / d H_t = -entropy_coef * w_t``) through its own
parameters only. The weights are constants of the loss, so any per-action constant factor
(such as a truncated importance weight between two engines' log-probabilities) folds into them.

This is numpy, and it is the reference for other array libraries: a torch policy computes the
same formulas with autograd and is tested against :func:`grpo_objective` on the same numbers
(loss, metrics, and its autograd ``d loss / d logp`` against :attr:`GRPOTerms.dloss_dlogp`).
Inputs may be flat (one entry per action) or padded ``(N, T)`` with a boolean ``mask`` of the
actions that count; entries outside the mask take no part in the loss, its gradient or the
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.sections import GRPOConfig

__all__ = ("GRPOTerms", "grpo_objective", "sequence_weights", "tis_weights")


def sequence_weights(lengths: np.ndarray, loss_type: str, *, max_tokens: int) -> np.ndarray:
    """(N,) the aggregation weight of each action of each sequence, from the (N,) action counts.

    ``max_tokens`` is the generation cap T_max that ``dr_grpo`` divides by (the longest sequence
    if that is longer). The weights of all actions sum to 1 for ``grpo`` and ``dapo``.

    Raises:
        ValueError: an unknown ``loss_type``.
    """
    t_len = np.asarray(lengths, dtype=np.int64)  # (N,)
    n = t_len.size
    if loss_type == "grpo":
        return 1.0 / (n * t_len)
    if loss_type == "dapo":
        return np.full(n, 1.0 / int(t_len.sum()))
    if loss_type == "dr_grpo":
        return np.full(n, 1.0 / (n * max(max_tokens, int(t_len.max()))))
    raise ValueError(f"unknown loss_type {loss_type!r}")


@dataclass(frozen=True, slots=True)
class GRPOTerms:
    """The per-action terms of one mini-batch's GRPO loss, all of the inputs' shape.

    Attributes:
        logratio: ``logp_new - logp_old``.
        ratio: ``exp(logratio)``.
        pg_loss: the clipped surrogate ``max(pg_loss1, pg_loss2)``.
        kl: the k3 estimate of KL(new || ref).
        entropy: the entropy given by the caller, or None.
        loss: ``pg_loss + beta * kl - entropy_coef * entropy`` per action.
        clipped: the constant (clipped) branch is active.
        clip_low: clipped with a negative advantage (ratio below ``1 - epsilon``).
        clip_high: clipped with a positive advantage (ratio above ``1 + epsilon_high``).
        weights: the aggregation weight of each action (0 outside the mask).
        dloss_t_dlogp: ``d loss_t / d logp_new``, before weighting (0 outside the mask).
        entropy_coef: the entropy coefficient the loss used.
        mask: the actions that count, or None for all of them.
        mismatch: ``logp_old - logp_behaviour`` under truncated importance sampling, else None.
        is_weight: the truncated importance weight of each action (TIS), else None; ``weights``
            already include it.
        tis_cap: the truncation cap (TIS), else None.
    """

    logratio: np.ndarray
    ratio: np.ndarray
    pg_loss: np.ndarray
    kl: np.ndarray
    entropy: np.ndarray | None
    loss: np.ndarray
    clipped: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    weights: np.ndarray
    dloss_t_dlogp: np.ndarray
    entropy_coef: float
    mask: np.ndarray | None
    mismatch: np.ndarray | None = None
    is_weight: np.ndarray | None = None
    tis_cap: float | None = None

    @property
    def dloss_dlogp(self) -> np.ndarray:
        """``d loss / d logp_new`` of each action: the weight times ``d loss_t / d logp_new``."""
        return self.weights * self.dloss_t_dlogp

    @property
    def dloss_dentropy(self) -> np.ndarray:
        """``d loss / d H_t`` of each action: ``-entropy_coef * w_t``."""
        return -self.entropy_coef * self.weights

    def _counted(self, a: np.ndarray) -> np.ndarray:
        return a if self.mask is None else a[self.mask]

    def metrics(self) -> dict[str, float]:
        """The step metrics of this mini-batch.

        ``loss`` (total) and ``policy_loss`` (the clipped surrogate) under the aggregation;
        means over actions of ``kl`` (k3), ``entropy`` (when given), ``clip_ratio``,
        ``clip_ratio/low``, ``clip_ratio/high`` (shares of actions on the clipped branch),
        ``approx_kl`` (``(ratio - 1) - logratio``, old vs new) and ``ratio_mean``; ``tokens``,
        the number of actions; under truncated importance sampling the ``mismatch/*`` metrics
        of the module docstring.
        """
        w = self._counted(self.weights)
        ratio, logratio = self._counted(self.ratio), self._counted(self.logratio)
        out = {
            "loss": float(w @ self._counted(self.loss)),
            "policy_loss": float(w @ self._counted(self.pg_loss)),
            "kl": float(self._counted(self.kl).mean()),
        }
        if self.entropy is not None:
            out["entropy"] = float(self._counted(self.entropy).mean())
        out.update(
            {
                "clip_ratio": float(self._counted(self.clipped).mean()),
                "clip_ratio/low": float(self._counted(self.clip_low).mean()),
                "clip_ratio/high": float(self._counted(self.clip_high).mean()),
                "approx_kl": float(((ratio - 1.0) - logratio).mean()),
                "ratio_mean": float(ratio.mean()),
                "tokens": float(ratio.size),
            }
        )
        if self.mismatch is not None and self.is_weight is not None and self.tis_cap is not None:
            delta = self._counted(self.mismatch)
            raw = np.exp(delta)
            out.update(
                {
                    "mismatch/abs_logp": float(np.abs(delta).mean()),
                    "mismatch/k3_kl": float((raw - 1.0 - delta).mean()),
                    "mismatch/capped": float((raw > self.tis_cap).mean()),
                    "mismatch/is_weight": float(self._counted(self.is_weight).mean()),
                }
            )
        return out


def tis_weights(old_logp: np.ndarray, behaviour_logp: np.ndarray, cap: float) -> np.ndarray:
    """The truncated importance weight ``min(exp(old_logp - behaviour_logp), cap)`` of each
    action (module docstring).

    Raises:
        ValueError: ``cap`` is not positive.
    """
    if not cap > 0:
        raise ValueError(f"tis_cap must be > 0, got {cap}")
    return np.minimum(np.exp(old_logp - behaviour_logp), cap)


def grpo_objective(
    new_logp: np.ndarray,
    old_logp: np.ndarray,
    ref_logp: np.ndarray,
    advantages: np.ndarray,
    weights: np.ndarray,
    grpo: GRPOConfig,
    *,
    entropy: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    behaviour_logp: np.ndarray | None = None,
    tis_cap: float = 2.0,
) -> GRPOTerms:
    """The GRPO loss terms of a mini-batch (module docstring), from which
    :attr:`GRPOTerms.dloss_dlogp` and :meth:`GRPOTerms.metrics` come.

    Args:
        new_logp, old_logp, ref_logp: the log-probability of each action under the policy
            being trained, the behaviour policy that generated it and the reference policy.
        advantages: the advantage of each action, or anything that broadcasts to it (a
            rollout's advantage applies to each of its actions: ``(N, 1)`` for padded inputs).
        weights: the aggregation weight of each action (broadcasts like ``advantages``);
            :func:`sequence_weights` gives them per sequence.
        grpo: ``epsilon``, ``epsilon_high``, ``beta`` and ``entropy_coef`` are used.
        entropy: the policy's entropy at each action, or None for no entropy term.
        mask: boolean, the actions that count (padded inputs), or None for all.
        behaviour_logp: the log-probability of each action under the engine that sampled it
            when that is not the trainer (truncated importance sampling, module docstring;
            ``old_logp`` is then the trainer's), or None.
        tis_cap: the truncation of the importance weight (with ``behaviour_logp`` only).
    """
    if mask is not None:  # padded entries: ratio 1, KL 0, weight 0, whatever they held
        new_logp, old_logp, ref_logp, weights = (
            np.where(mask, a, 0.0) for a in (new_logp, old_logp, ref_logp, weights)
        )
        if behaviour_logp is not None:
            behaviour_logp = np.where(mask, behaviour_logp, 0.0)
    mismatch = is_weight = None
    if behaviour_logp is not None:
        mismatch = old_logp - behaviour_logp
        is_weight = tis_weights(old_logp, behaviour_logp, tis_cap)
        weights = weights * is_weight
    adv = advantages
    eps_high = grpo.epsilon_high if grpo.epsilon_high is not None else grpo.epsilon
    logratio = new_logp - old_logp
    ratio = np.exp(logratio)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * np.clip(ratio, 1.0 - grpo.epsilon, 1.0 + eps_high)
    pg_loss = np.maximum(pg_loss1, pg_loss2)
    clipped = pg_loss2 > pg_loss1
    d_ref = ref_logp - new_logp
    kl = np.exp(d_ref) - d_ref - 1.0
    loss = pg_loss + grpo.beta * kl
    if entropy is not None:
        loss = loss - grpo.entropy_coef * entropy
    dloss_t_dlogp = np.where(clipped, 0.0, -adv * ratio) + grpo.beta * (1.0 - np.exp(d_ref))
    if mask is not None:
        dloss_t_dlogp = np.where(mask, dloss_t_dlogp, 0.0)
    return GRPOTerms(
        logratio=logratio,
        ratio=ratio,
        pg_loss=pg_loss,
        kl=kl,
        entropy=entropy,
        loss=loss,
        clipped=clipped,
        clip_low=clipped & (adv < 0),
        clip_high=clipped & (adv > 0),
        weights=np.broadcast_to(weights, ratio.shape),
        dloss_t_dlogp=dloss_t_dlogp,
        entropy_coef=grpo.entropy_coef,
        mask=mask,
        mismatch=mismatch,
        is_weight=is_weight,
        tis_cap=tis_cap if behaviour_logp is not None else None,
    )
