"""Assembly: turns a :class:`RunConfig` into the policy, rewards and data a run needs.

The trainer calls :func:`build_components` when the caller did not pass its own parts; each
policy kind contributes one branch here, so the trainer never names a concrete policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.schema import RunConfig
from ..errors import ConfigError
from ..policies.base import Policy
from ..rewards.rewarder import Rewarder, RewardSpec
from ..telemetry.events import get_logger
from ..types import Example

if TYPE_CHECKING:
    from contextlib import AsyncExitStack

    from ..endpoints.client import Client
    from ..telemetry.events import EventLog

__all__ = ("build_components", "make_client", "open_clients")

PROMPT_LR_HINT = 0.05
"""Below this ``optim.lr`` the prompt policy's candidate logits barely move (the engine's
default, 0.01, suits the embedded LM); a warning says so."""


def build_components(
    cfg: RunConfig,
    policy: Policy | None = None,
    *,
    client: Client | None = None,
    judge_client: Client | None = None,
) -> tuple[Policy, Rewarder | None, list[Example] | None]:
    """The policy (``policy`` if given), its default rewarder, and built-in examples if any.

    Endpoint policies (``prompt``) need ``client`` to build the policy; ``judge_client``
    (default ``client``) serves ``reward.judge_prompt``.
    """
    if cfg.policy == "tinylm":
        from ..data import tasks
        from ..policies.tinylm import TinyLM

        pol = policy or TinyLM(cfg.tinylm, seed=cfg.seed)
        reward = Rewarder([RewardSpec(cfg.tinylm.task, tasks.reward, inline=True)])
        examples = None
        if not cfg.data.train:
            examples = tasks.make_examples(cfg.tinylm, cfg.data.num_examples, cfg.seed)
        return pol, reward, examples
    if cfg.policy == "prompt":
        from ..data import datasets
        from ..policies.prompt import PromptPolicy
        from ..rewards.functions import build_rewarder

        examples = None if cfg.data.train else datasets.load("sentiment")
        instructions = cfg.prompt.instructions
        if not instructions and examples is not None:
            instructions = ("Classify the sentiment of this review.",)
        if policy is None:
            if client is None:
                raise ConfigError(
                    "policy 'prompt' needs an endpoint client: pass client= (the CLI opens "
                    "one from [endpoint]) or use engine.finetune()",
                    key="policy",
                )
            if not instructions:
                raise ConfigError(
                    'the prompt policy needs the base prompt: prompt.instructions = ["..."]',
                    key="prompt.instructions",
                )
            policy = PromptPolicy.from_config(
                cfg, client, examples=examples, instructions=instructions
            )
            if cfg.optim.lr < PROMPT_LR_HINT:
                get_logger(__name__).warning(
                    "prompt_policy.low_lr",
                    lr=cfg.optim.lr,
                    hint=f"the prompt policy learns candidate logits: optim.lr below "
                    f"{PROMPT_LR_HINT} barely moves them (0.2-0.3 is typical; the examples "
                    "and finetune() use 0.2-0.3)",
                )
        judge = judge_client or client
        reward = None
        if judge is not None or not cfg.reward.judge_prompt.strip():
            reward = build_rewarder(cfg, judge_client=judge)
        return policy, reward, examples
    if policy is None:
        raise ConfigError(
            f"policy {cfg.policy!r} needs an endpoint client: use engine.finetune()",
            key="policy",
        )
    return policy, None, None


def make_client(
    config: RunConfig, *, judge: bool = False, events: EventLog | None = None
) -> Client:
    """The one place an endpoint :class:`~engine.endpoints.client.Client` is built.

    Serves ``[endpoint]``, or with ``judge=True`` the ``[judge]`` section (``[endpoint]`` when
    there is none), under the run's ``[limits]`` and ``[retry]``; its request events go to
    ``events``. The client is not open yet: use it as an async context manager.
    """
    from ..endpoints.client import Client

    endpoint = (config.judge or config.endpoint) if judge else config.endpoint
    return Client(endpoint, limits=config.limits, retry=config.retry, events=events)


async def open_clients(
    config: RunConfig, stack: AsyncExitStack, events: EventLog | None
) -> tuple[Client, Client]:
    """Open the generation client and the judge client (the same one unless ``[judge]`` is
    set) on ``stack``, which closes them; both write to ``events``."""
    client = await stack.enter_async_context(make_client(config, events=events))
    judge = client
    if config.judge is not None:
        judge = await stack.enter_async_context(make_client(config, judge=True, events=events))
    return client, judge
