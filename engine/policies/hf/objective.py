"""The GRPO objective of :mod:`engine.policies.objective` in torch, differentiated by autograd.

The formulas, the aggregations and the departures from the papers are those of the numpy
reference (read its module docstring); this module computes the same loss on tensors so the
gradient reaches the model's parameters. ``tests/policies/hf/test_objective.py`` checks the
loss and its gradient with respect to the new log-probabilities (and the entropies) against
:func:`engine.policies.objective.grpo_objective` on the same numbers.

The clipped branch is chosen exactly as the reference chooses it (``pg_loss2 > pg_loss1``,
then the constant branch), so ties give the unclipped gradient in both.

Truncated importance sampling (``behaviour_logp`` given): each action's weight is multiplied by
``min(exp(old_logp - behaviour_logp), tis_cap)``, a constant, exactly as the reference does.
"""

from __future__ import annotations

import torch

from ...config.sections import GRPOConfig

__all__ = ("grpo_loss",)


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    grpo: GRPOConfig,
    *,
    entropy: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    behaviour_logp: torch.Tensor | None = None,
    tis_cap: float = 2.0,
) -> torch.Tensor:
    """The scalar loss ``sum_t w_t * loss_t`` over the actions that count.

    Args:
        new_logp: log-probability of each action under the policy being trained (carries
            the gradient).
        old_logp: the behaviour policy's (constants).
        ref_logp: the reference policy's (constants).
        advantages, weights: per action, or broadcasting to the actions (``(N, 1)`` for
            padded ``(N, T)`` inputs); weights from
            :func:`engine.policies.objective.sequence_weights`.
        grpo: ``epsilon``, ``epsilon_high``, ``beta`` and ``entropy_coef`` are used.
        entropy: the policy's entropy at each action (differentiable), or None.
        mask: boolean, the actions that count (padded inputs), or None for all.
        behaviour_logp: the sampling engine's log-probabilities when it is not the trainer
            (``old_logp`` is then the trainer's recomputation), or None: no importance weight.
        tis_cap: the truncation of the importance weight (with ``behaviour_logp`` only).
    """
    old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
    if mask is not None:  # padded entries: ratio 1, KL 0, weight 0, whatever they held
        zero = torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
        new_logp = torch.where(mask, new_logp, zero)
        old_logp = torch.where(mask, old_logp, zero)
        ref_logp = torch.where(mask, ref_logp, zero)
        weights = torch.where(mask, weights, zero)
        if behaviour_logp is not None:
            behaviour_logp = torch.where(mask, behaviour_logp.detach(), zero)
    if behaviour_logp is not None:
        if not tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0, got {tis_cap}")
        is_weight = torch.clamp(torch.exp(old_logp - behaviour_logp.detach()), max=tis_cap)
        weights = weights * is_weight
    eps_high = grpo.epsilon_high if grpo.epsilon_high is not None else grpo.epsilon
    ratio = torch.exp(new_logp - old_logp)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - grpo.epsilon, 1.0 + eps_high)
    clipped = (pg_loss2 > pg_loss1).detach()
    pg_loss = torch.where(clipped, pg_loss2, pg_loss1)
    d_ref = ref_logp - new_logp
    kl = torch.exp(d_ref) - d_ref - 1.0
    loss_t = pg_loss + grpo.beta * kl
    if entropy is not None:
        if mask is not None:
            entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
        loss_t = loss_t - grpo.entropy_coef * entropy
    return (weights * loss_t).sum()
