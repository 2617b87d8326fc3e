"""Assembly: turns a :class:`RunConfig` into the policy, rewards and data a run needs.

The trainer calls :func:`build_components` when the caller did not pass its own parts; each
policy kind contributes one branch here, so the trainer never names a concrete policy.
"""

from __future__ import annotations

from .config import RunConfig
from .errors import ConfigError
from .policies.base import Policy
from .rewards import Rewarder, RewardSpec
from .types import Example

__all__ = ("build_components",)


def build_components(
    cfg: RunConfig, policy: Policy | None = None
) -> tuple[Policy, Rewarder | None, list[Example] | None]:
    """The policy (``policy`` if given), its default rewarder, and built-in examples if any."""
    if cfg.policy == "tinylm":
        from . import tasks
        from .policies.tinylm import TinyLM

        pol = policy or TinyLM(cfg.tinylm, seed=cfg.seed)
        reward = Rewarder([RewardSpec(cfg.tinylm.task, tasks.reward, inline=True)])
        examples = None
        if not cfg.data.train:
            examples = tasks.make_examples(cfg.tinylm, cfg.data.num_examples, cfg.seed)
        return pol, reward, examples
    if policy is None:
        raise ConfigError(
            f"policy {cfg.policy!r} needs an endpoint client: use engine.finetune()",
            key="policy",
        )
    return policy, None, None
