"""Assembly: the one place a :class:`RunConfig` becomes clients, judges, rewarders and policies.

``python -m engine run``, ``eval`` and ``compare`` and :func:`engine.finetune` build every part
they need here, from a config::

    async with AsyncExitStack() as stack:
        client, judge = await open_clients(config, stack, events)
        policy, rewarder, examples = build_components(config, client=client, judge_client=judge)

The trainer calls :func:`build_components` when the caller did not pass its own parts; each
policy kind contributes one branch here, so the trainer never names a concrete policy.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ..config.sections import RewardConfig, RunConfig
from ..data import datasets, tasks
from ..endpoints.adapters import AdapterClient
from ..endpoints.client import Client
from ..endpoints.spend import SpendMeter
from ..environments.registry import builtin_examples
from ..errors import ConfigError
from ..policies.base import Policy
from ..policies.hf import build_hf_policy
from ..policies.hf.server import ServerGeneration
from ..policies.prompt import PromptPolicy
from ..policies.served import ServedAdapters
from ..policies.tinylm import TinyLM
from ..rewards.code import UnitTestsReward
from ..rewards.functions import REWARD_FUNCTIONS, resolve_reward_fn
from ..rewards.judges import GroupJudge, LLMJudge
from ..rewards.rewarder import GroupJudgeLike, JudgeSpec, Rewarder, RewardSpec, RolloutJudgeLike
from ..sandbox import Sandbox
from ..telemetry.events import EventLog
from ..telemetry.logs import get_logger
from ..types import Example

__all__ = (
    "PROMPT_LR_HINT",
    "build_components",
    "build_judge",
    "build_prompt_policy",
    "build_rewarder",
    "finetune_rewarder",
    "make_client",
    "needs_endpoint",
    "open_clients",
    "open_hf_server",
    "reward_registry",
    "rewarder_from_config",
    "task_rewarder",
)

PROMPT_LR_HINT = 0.05
"""Below this ``optim.lr`` the prompt policy's candidate logits barely move (the engine's
default, 0.01, suits the embedded LM); a warning says so."""

SENTIMENT_INSTRUCTION = "Classify the sentiment of this review."
"""The prompt policy's base prompt on the built-in sentiment dataset."""

ENVIRONMENT_INSTRUCTION = "Answer the question."
"""The prompt policy's base prompt on a built-in environment's dataset (the environment's own
instructions are in each episode's first prompt)."""

RewardItem = Callable[..., Any] | RewardSpec | JudgeSpec | RolloutJudgeLike | GroupJudgeLike
"""What :func:`finetune_rewarder` accepts besides a Rewarder: a function or a judge."""


# ----------------------------------------------------------------------------- clients


def make_client(
    config: RunConfig,
    *,
    judge: bool = False,
    events: EventLog | None = None,
    spend: SpendMeter | None = None,
) -> Client:
    """The one place an endpoint :class:`~engine.endpoints.client.Client` is built.

    Serves ``[endpoint]``, or with ``judge=True`` the ``[judge]`` section (``[endpoint]`` when
    there is none), under the run's ``[limits]`` and ``[retry]``; its request events go to
    ``events``; ``spend`` prices its requests and holds the run's budget (None: a meter from
    ``[prices]`` and ``limits.max_cost_usd`` of its own). The client is not open yet: use it
    as an async context manager.
    """
    endpoint = (config.judge or config.endpoint) if judge else config.endpoint
    if spend is None:
        spend = SpendMeter.from_config(config)
    return Client(endpoint, limits=config.limits, retry=config.retry, events=events, spend=spend)


def needs_endpoint(config: RunConfig) -> bool:
    """Whether a run of ``config`` talks to an endpoint: the prompt policy generates through
    one; the hf policy only when an LLM judge scores its rollouts; tinylm never."""
    if config.policy == "prompt":
        return True
    if config.policy == "hf" and config.hf.generation == "server":
        return True
    return config.policy == "hf" and bool(config.reward.judge_prompt.strip())


async def open_clients(
    config: RunConfig,
    stack: AsyncExitStack,
    events: EventLog | None,
    spend: SpendMeter | None = None,
) -> tuple[Client, Client]:
    """Open the generation client and the judge client (the same one unless ``[judge]`` is
    set) on ``stack``, which closes them; both write to ``events`` and share one spend meter
    (``spend``, or one made from the config): the budget covers them together."""
    if spend is None:
        spend = SpendMeter.from_config(config)
    client = await stack.enter_async_context(make_client(config, events=events, spend=spend))
    judge = client
    if config.judge is not None:
        judge = await stack.enter_async_context(
            make_client(config, judge=True, events=events, spend=spend)
        )
    return client, judge


async def open_hf_server(
    config: RunConfig,
    policy: Policy,
    stack: AsyncExitStack,
    *,
    client: Client,
    events: EventLog | None = None,
    run_name: str | None = None,
) -> ServerGeneration:
    """Attach the server generation of ``hf.generation = "server"`` to the hf ``policy``:
    the adapter API of ``[endpoint]`` (opened on ``stack``), the run's
    :class:`~engine.policies.served.ServedAdapters` (adapters written by the policy into
    ``hf.adapter_dir``, default ``<out>/adapters``, under ``run_name``-v<version>, default a
    fresh ``grpo-<8 hex>``) and generation through ``client``. The server is checked here
    (it serves ``endpoint.model`` and has the runtime adapter API), before any step; ``stack``
    unloads the run's adapters when it closes.

    Raises:
        ConfigError: ``policy`` is not an hf policy, or the server does not serve the base
            model.
        RequestRejected: the server has no runtime adapter API.
    """
    attach = getattr(policy, "attach_server", None)
    if attach is None:
        raise ConfigError("hf.generation = 'server' needs the hf policy", key="hf.generation")
    api = await stack.enter_async_context(AdapterClient(config.endpoint, events=events))
    directory = Path(config.hf.adapter_dir or Path(config.out) / "adapters")
    served = ServedAdapters(
        api,
        base_model=config.endpoint.model,
        run_name=run_name or f"grpo-{uuid.uuid4().hex[:8]}",
        max_staleness=config.grpo.max_staleness,
        write=policy.write_adapter,  # type: ignore[attr-defined]
        directory=directory,
    )
    server = ServerGeneration(
        client,
        served,
        policy.tokenizer,  # type: ignore[attr-defined]
        config.hf,
        vocab_size=policy.vocab_size,  # type: ignore[attr-defined]
    )
    await server.start()
    stack.push_async_callback(server.close)
    attach(server)
    return server


# ----------------------------------------------------------------------------- rewards


def build_judge(
    rubric: str, client: Client, *, group: bool = False, **options: Any
) -> LLMJudge | GroupJudge:
    """An LLM judge grading with ``rubric`` on ``client``: a :class:`GroupJudge` (all members
    of a group in one call) when ``group``, else an :class:`LLMJudge`. ``options`` go to the
    judge's constructor (``name``, ``mode``, ``cache``...)."""
    if group:
        return GroupJudge(client, rubric, **options)
    return LLMJudge(client, rubric, **options)


def rewarder_from_config(
    reward: RewardConfig,
    *,
    registry: Mapping[str, Callable[..., Any]] | None = None,
    judge_client: Client | None = None,
    judge_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Rewarder:
    """A Rewarder from a ``[reward]`` section.

    Functions are resolved by :func:`~engine.rewards.functions.resolve_reward_fn`
    (``registry`` first); built-ins not shadowed by ``registry`` run inline. A non-empty
    ``judge_prompt`` adds a judge (:func:`build_judge`; a group judge with ``group_judge =
    true``) on ``judge_client`` with ``judge_weight``; ``judge_options`` go to the judge's
    constructor. ``normalize`` is the learner's business and is not read here. Other
    ``kwargs`` go to the Rewarder (``gate``...).

    Raises:
        ConfigError: an unknown function, or a judge prompt without a judge client.
    """
    weights = reward.weights or (1.0,) * len(reward.functions)
    specs = [
        RewardSpec(
            name,
            resolve_reward_fn(name, registry),
            weight=w,
            inline=name in REWARD_FUNCTIONS and not (registry and name in registry),
        )
        for name, w in zip(reward.functions, weights, strict=True)
    ]
    judges: list[JudgeSpec] = []
    if reward.judge_prompt.strip():
        if judge_client is None:
            raise ConfigError(
                "reward.judge_prompt is set but no judge client was given",
                key="reward.judge_prompt",
            )
        judge = build_judge(
            reward.judge_prompt, judge_client, group=reward.group_judge, **(judge_options or {})
        )
        judges.append(JudgeSpec(judge, reward.judge_weight))
    return Rewarder(
        specs, judges=judges, format_failure_reward=reward.format_failure_reward, **kwargs
    )


def _judge_options(config: RunConfig, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The judge's constructor options: the judge endpoint's mode unless ``options`` say."""
    return {"mode": (config.judge or config.endpoint).mode, **(options or {})}


def build_rewarder(
    config: RunConfig,
    *,
    judge_client: Client | None = None,
    default_functions: tuple[str, ...] = ("exact_match",),
    judge_options: Mapping[str, Any] | None = None,
) -> Rewarder:
    """The run's :class:`~engine.rewards.rewarder.Rewarder` from ``[reward]``.

    With neither functions nor a judge prompt configured, ``default_functions`` are used.
    The judge, when ``judge_prompt`` is set, runs on ``judge_client`` in the judge endpoint's
    mode (``config.judge``, else ``config.endpoint``).

    Raises:
        ConfigError: an unknown function, or a judge prompt without a judge client.
    """
    reward = config.reward
    if not reward.functions and not reward.judge_prompt.strip():
        reward = dataclasses.replace(reward, functions=default_functions, weights=())
    return rewarder_from_config(
        reward,
        registry=reward_registry(config),
        judge_client=judge_client,
        judge_options=_judge_options(config, judge_options),
    )


def reward_registry(config: RunConfig) -> dict[str, Callable[..., Any]]:
    """The built-in reward functions, ``unit_tests`` on a sandbox with the run's
    ``[sandbox]`` limits."""
    return {**REWARD_FUNCTIONS, "unit_tests": UnitTestsReward(Sandbox(config.sandbox)).__call__}


def finetune_rewarder(
    config: RunConfig,
    reward: Rewarder | RewardItem | Sequence[RewardItem] | None,
    judge_client: Client | None,
    judge_options: Mapping[str, Any] | None = None,
) -> Rewarder:
    """The rewards of :func:`engine.finetune`: ``reward`` (a Rewarder, or functions and judges
    to combine), plus the judge of ``reward.judge_prompt``; none given: :func:`build_rewarder`.

    Raises:
        ValueError: a Rewarder and a ``reward.judge_prompt`` both given.
    """
    if isinstance(reward, Rewarder):
        if config.reward.judge_prompt.strip():
            raise ValueError("pass reward_prompt, or a Rewarder with its own judges, not both")
        return reward
    items: list[Any] = []
    if reward is not None:
        items = list(reward) if isinstance(reward, list | tuple) else [reward]
    if not items:
        return build_rewarder(config, judge_client=judge_client, judge_options=judge_options)
    functions = [f for f in items if not _is_judge(f)]
    judges = [j for j in items if _is_judge(j)]
    if config.reward.judge_prompt.strip():
        section = dataclasses.replace(config.reward, functions=(), weights=())
        options = _judge_options(config, judge_options)
        judges += list(
            rewarder_from_config(section, judge_client=judge_client, judge_options=options).judges
        )
    return Rewarder(
        functions, judges=judges, format_failure_reward=config.reward.format_failure_reward
    )


def _is_judge(item: object) -> bool:
    """A judge, as the Rewarder tells one: it has a boolean ``per_group``."""
    return isinstance(getattr(item, "per_group", None), bool)


def task_rewarder(config: RunConfig) -> Rewarder:
    """The built-in task's reward (``tinylm.task``), run inline."""
    return Rewarder([RewardSpec(config.tinylm.task, tasks.reward, inline=True)])


# ----------------------------------------------------------------------------- policies


def build_prompt_policy(
    config: RunConfig,
    client: Client,
    *,
    examples: Sequence[Example] | None = None,
    instructions: Sequence[str] | None = None,
    separate_heldout: bool | None = None,
) -> PromptPolicy:
    """The prompt policy of ``config`` on ``client``, its seed demos drawn from ``examples``
    (see :meth:`~engine.policies.prompt.PromptPolicy.from_config`)."""
    kwargs: dict[str, Any] = {}
    if instructions is not None:
        kwargs["instructions"] = instructions
    if separate_heldout is not None:
        kwargs["separate_heldout"] = separate_heldout
    return PromptPolicy.from_config(config, client, examples=examples, **kwargs)


def build_components(
    config: RunConfig,
    policy: Policy | None = None,
    *,
    client: Client | None = None,
    judge_client: Client | None = None,
) -> tuple[Policy, Rewarder | None, list[Example] | None]:
    """The policy (``policy`` if given), its default rewarder, and built-in examples if any.

    Endpoint policies (``prompt``) need ``client`` to build the policy; ``judge_client``
    (default ``client``) serves ``reward.judge_prompt``.
    """
    if config.policy == "tinylm":
        return _tinylm_components(config, policy)
    if config.policy == "prompt":
        return _prompt_components(config, policy, client, judge_client or client)
    if config.policy == "hf":
        return _hf_components(config, policy, judge_client or client)
    if policy is None:
        raise ConfigError(
            f"policy {config.policy!r} needs an endpoint client: use engine.finetune()",
            key="policy",
        )
    return policy, None, None


def _tinylm_components(
    config: RunConfig, policy: Policy | None
) -> tuple[Policy, Rewarder, list[Example] | None]:
    """The embedded LM, the task's reward, and the task's examples unless ``data.train`` (the
    environment's built-in dataset with ``[environment]``, whose episodes need the calculator
    vocabulary: ``tinylm.vocab = "calculator"``).

    Raises:
        ConfigError: an environment with the digits-only task vocabulary.
    """
    if config.environment.name and config.tinylm.vocab == "task":
        raise ConfigError(
            "the embedded LM's task vocabulary holds digits only: episodes of "
            f'environment {config.environment.name!r} need tinylm.vocab = "calculator"',
            key="tinylm.vocab",
        )
    policy = policy or TinyLM(config.tinylm, seed=config.seed)
    examples = None
    if not config.data.train and config.environment.name:
        examples = builtin_examples(config.environment.name)
    elif not config.data.train:
        examples = tasks.make_examples(config.tinylm, config.data.num_examples, config.seed)
    return policy, task_rewarder(config), examples


def _hf_components(
    config: RunConfig, policy: Policy | None, judge_client: Client | None
) -> tuple[Policy, Rewarder | None, list[Example] | None]:
    """The open-weight model of ``[hf]`` (loaded here: a GGUF is converted once and cached),
    the ``[reward]`` rewarder (default ``exact_match``; None while its judge has no client),
    and the built-in sentiment examples unless ``data.train``."""
    examples = None if config.data.train else _builtin_examples(config)
    policy = policy or build_hf_policy(config.hf, seed=config.seed)
    reward = None
    if judge_client is not None or not config.reward.judge_prompt.strip():
        reward = build_rewarder(config, judge_client=judge_client)
    return policy, reward, examples


def _prompt_components(
    config: RunConfig, policy: Policy | None, client: Client | None, judge_client: Client | None
) -> tuple[Policy, Rewarder | None, list[Example] | None]:
    """The prompt policy on ``client``, the ``[reward]`` rewarder (None while its judge has no
    client), and the built-in sentiment examples unless ``data.train``."""
    examples = None if config.data.train else _builtin_examples(config)
    if policy is None:
        policy = _new_prompt_policy(config, client, examples)
    reward = None
    if judge_client is not None or not config.reward.judge_prompt.strip():
        reward = build_rewarder(config, judge_client=judge_client)
    return policy, reward, examples


def _builtin_examples(config: RunConfig) -> list[Example]:
    """The built-in data of a run without ``data.train``: the environment's dataset when a
    built-in environment is selected, else the sentiment reviews."""
    name = config.environment.name
    return (builtin_examples(name) if name else None) or datasets.load("sentiment")


def _new_prompt_policy(
    config: RunConfig, client: Client | None, examples: list[Example] | None
) -> PromptPolicy:
    instructions = config.prompt.instructions
    if not instructions and examples is not None:
        env = config.environment.name
        instructions = (ENVIRONMENT_INSTRUCTION if env else SENTIMENT_INSTRUCTION,)
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
    policy = build_prompt_policy(config, client, examples=examples, instructions=instructions)
    if config.optim.lr < PROMPT_LR_HINT:
        get_logger(__name__).warning(
            "prompt_policy.low_lr",
            lr=config.optim.lr,
            hint=f"the prompt policy learns candidate logits: optim.lr below "
            f"{PROMPT_LR_HINT} barely moves them (0.2-0.3 is typical; the examples "
            "and finetune() use 0.2-0.3)",
        )
    return policy
