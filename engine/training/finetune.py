"""Fine-tuning a model you cannot retrain: ``finetune()`` and the
:class:`FineTunedModel` it returns.

::

    model = await finetune(
        training_data,                         # TrainingExample dicts, or a JSONL path
        base_prompt="Classify the sentiment of this review.",
        reward=exact_match,                    # callables (example, text) -> float, or a list
        reward_prompt=None,                    # a rubric: adds an LLM judge
        optimizer={"learning_rate": 0.2, "epochs": 2},
        endpoint={"provider": "openrouter", "model": "openai/gpt-4o-mini"},
    )
    async with model:                          # the model owns its client
        print(await model.generate("The soup was cold."))
        print(model.best_prompt)
        for c in model.candidates:
            print(f"{c.probability:.2f}  {c.instruction!r}  demos={len(c.demos)}")
        model.save("models/sentiment")

What "fine-tuning" means here: the weights of a hosted model are out of reach, so GRPO trains
the :class:`~engine.policies.prompt.PromptPolicy`, a distribution over prompt candidates
(instruction variants x few-shot demo sets), with group-relative advantages, the clipped ratio,
KL to the initial distribution and new candidates proposed by the model itself. The result is
the prompt (or the prompt distribution) that earns the most reward; :meth:`FineTunedModel.
generate` answers with the most probable candidate (greedy) or a sampled one.

Defaults differ from the embedded LM's because a prompt policy has a handful of parameters and
every rollout is an API call: unless ``config`` is given, a run is 20 steps of 4 prompts x 4
rollouts at learning rate 0.2 on the candidate logits. A ``learningRate`` of 0.001 is accepted
but moves a logit by about 0.001 per step: 0.05-0.5 is the useful range here.

Open-weight models: with ``hf={"model": ...}`` (or a ``config`` whose policy is ``hf``) the
same call trains the model's own weights (a LoRA adapter) in-process, with no endpoint, and
returns an :class:`HFFineTunedModel`, whose :meth:`~HFFineTunedModel.save` writes a PEFT
adapter (``peft.PeftModel.from_pretrained`` and vLLM's ``--lora-modules`` load it) beside the
engine's JSON metadata::

    model = await finetune(data, base_prompt="Review: {text}\nSentiment:", reward=exact_match,
                           hf={"model": "gemma3-270m"}, optimizer={"lr": 1e-4, "steps": 16})
    print(await model.generate("The soup was cold."))   # greedy
    model.save("models/sentiment-lora")

Every client, rewarder and policy is built by the assembly (:mod:`engine.training.assembly`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np

from ..config.loading import load_config, to_dict
from ..config.sections import (
    EndpointConfig,
    GRPOConfig,
    HFConfig,
    OptimConfig,
    PromptPolicyConfig,
    RunConfig,
)
from ..data.jsonl import parse_example, read_jsonl
from ..endpoints.client import Client
from ..endpoints.spend import SpendMeter
from ..errors import CheckpointError, ConfigError
from ..files import temp_name
from ..learning.checkpoint import load_policy_checkpoint, restoring, save_checkpoint
from ..policies.hf import build_hf_policy
from ..policies.prompt import Candidate, Demo, PromptPolicy, render_completion, render_messages
from ..rewards.rewarder import Rewarder
from ..rollout.evaluate import EvalResult, evaluate_policy
from ..telemetry.events import EventLog
from ..types import Example
from .assembly import (
    RewardItem,
    build_prompt_policy,
    build_rewarder,
    finetune_rewarder,
    make_client,
    needs_endpoint,
)
from .saved import resolve_saved_config
from .trainer import TRAINERS, BatchMetrics, RunSummary, TrainingManager

if TYPE_CHECKING:
    from ..policies.hf.policy import HFPolicy

__all__ = (
    "CandidateInfo",
    "FineTunedModel",
    "HFFineTunedModel",
    "finetune",
    "finetune_config",
    "load_examples",
)

PROMPT_DEFAULTS: Mapping[str, Any] = {
    "steps": 20,
    "optim": {"lr": 0.2},
    "grpo": {"group_size": 4, "mini_batch_size": 2},
    "data": {"batch_size": 4},
    "trainer": {"eval_every": 5, "eval_size": 32, "checkpoint_every": 0},
}
"""Config used by :func:`finetune` when no ``config`` is given (on top of RunConfig's)."""

HF_DEFAULTS: Mapping[str, Any] = {
    "steps": 20,
    "optim": {"lr": 1e-4},
    "grpo": {"group_size": 4, "mini_batch_size": 2},
    "data": {"batch_size": 2},
    "trainer": {"eval_every": 5, "eval_size": 32, "checkpoint_every": 0},
}
"""Config used by :func:`finetune` for the hf policy (``hf=`` given) when no ``config`` is
given (on top of RunConfig's): LoRA at learning rate 1e-4."""

_OPTIMIZER_ALIASES: Mapping[str, str] = {
    "learningRate": "optim.lr",
    "learning_rate": "optim.lr",
    "clipEpsilon": "grpo.epsilon",
    "clip_epsilon": "grpo.epsilon",
    "miniBatchSize": "grpo.mini_batch_size",
    "entropyCoef": "grpo.entropy_coef",
    "groupSize": "grpo.group_size",
    "maxGradNorm": "optim.max_grad_norm",
    "weightDecay": "optim.weight_decay",
}


def load_examples(data: str | Path | Iterable[Mapping[str, Any] | Example]) -> list[Example]:
    """Examples from a JSONL path, :class:`~engine.types.Example` objects, or
    ``TrainingExample`` dicts (``{"input": {"text": ...}, "output": {...}}``) / plain
    ``{"prompt": ..., "answer": ...}`` dicts.

    Raises:
        DataError: a malformed item, naming its 1-based position.
    """
    if isinstance(data, str | Path):
        return list(read_jsonl(data))
    out: list[Example] = []
    for i, item in enumerate(data, start=1):
        if isinstance(item, Example):
            out.append(item)
        else:
            ex = parse_example(item, path="<train_data>", line=i)
            out.append(ex if "id" in item else dataclasses.replace(ex, id=f"example-{i}"))
    return out


def finetune_config(
    *,
    base_prompt: str | None = None,
    instructions: Sequence[str] = (),
    optimizer: GRPOConfig | Mapping[str, Any] | None = None,
    endpoint: EndpointConfig | Mapping[str, Any] | None = None,
    config: RunConfig | None = None,
    reward_prompt: str | None = None,
    prompt: PromptPolicyConfig | Mapping[str, Any] | None = None,
    hf: HFConfig | Mapping[str, Any] | None = None,
) -> RunConfig:
    """The run config :func:`finetune` uses: ``config`` (or :data:`PROMPT_DEFAULTS`) with the
    prompt policy, the base prompt first among the instructions, and the optimizer and
    endpoint settings merged in.

    With ``hf`` (an :class:`~engine.config.sections.HFConfig` or a dict of its fields), or a
    ``config`` whose policy is ``hf``, the run trains an open-weight model's weights instead
    (defaults :data:`HF_DEFAULTS`): ``base_prompt``, when given, is its ``hf.prompt_template``
    and must hold ``{text}``; ``instructions`` and ``prompt`` do not apply.

    ``optimizer`` is a :class:`~engine.config.sections.GRPOConfig`, or a dict of GRPOConfig or
    OptimConfig field names (``lr``, ``epochs``, ``beta``...), ``steps``, or the camelCase
    names ``learningRate``, ``clipEpsilon``, ``miniBatchSize``, ``entropyCoef``. ``prompt`` sets
    the prompt policy (``max_candidates``, ``max_demos``, ``propose_every``); its
    ``instructions`` join ``instructions``.

    Raises:
        ConfigError: an unknown key or an invalid value, naming it.
    """
    if hf is not None or (config is not None and config.policy == "hf"):
        data = _hf_data(base_prompt, config, hf)
    else:
        data = _prompt_data(base_prompt, instructions, config, prompt)
    if reward_prompt is not None:
        data["reward"]["judge_prompt"] = reward_prompt
    if isinstance(optimizer, GRPOConfig):
        data["grpo"] = to_dict(optimizer)
    elif optimizer is not None:
        _merge_optimizer(data, optimizer)
    if isinstance(endpoint, EndpointConfig):
        data["endpoint"] = to_dict(endpoint)
    elif endpoint is not None:
        data["endpoint"] = {**data["endpoint"], **dict(endpoint)}
    return load_config(base=data)


def _prompt_data(
    base_prompt: str | None,
    instructions: Sequence[str],
    config: RunConfig | None,
    prompt: PromptPolicyConfig | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The config data of a prompt-policy run, the base prompt first among its instructions."""
    if base_prompt is None or not base_prompt.strip():
        raise ConfigError("base_prompt must not be empty", key="base_prompt")
    data = to_dict(config) if config is not None else _merge(to_dict(RunConfig()), PROMPT_DEFAULTS)
    data["policy"] = "prompt"
    if prompt is not None:
        given = to_dict(prompt) if isinstance(prompt, PromptPolicyConfig) else dict(prompt)
        data["prompt"] = {**data["prompt"], **given}
    extra = [
        i for i in (*instructions, *data["prompt"].get("instructions", ())) if i != base_prompt
    ]
    data["prompt"]["instructions"] = [base_prompt, *dict.fromkeys(extra)]
    return data


def _hf_data(
    base_prompt: str | None, config: RunConfig | None, hf: HFConfig | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The config data of an hf run: ``hf`` over the config's section, ``base_prompt`` as the
    prompt template."""
    data = to_dict(config) if config is not None else _merge(to_dict(RunConfig()), HF_DEFAULTS)
    data["policy"] = "hf"
    if hf is not None:
        given = to_dict(hf) if isinstance(hf, HFConfig) else dict(hf)
        data["hf"] = {**data["hf"], **given}
    if base_prompt is not None:
        if "{text}" not in base_prompt:
            raise ConfigError(
                "with policy 'hf' base_prompt is the model's prompt template: it needs {text} "
                "where the input goes",
                key="base_prompt",
            )
        data["hf"]["prompt_template"] = base_prompt
    return data


def _merge_optimizer(data: dict[str, Any], optimizer: Mapping[str, Any]) -> None:
    """Set each optimizer setting in the config data ``data`` at its dotted key."""
    grpo_keys = {f.name for f in dataclasses.fields(GRPOConfig)}
    optim_keys = {f.name for f in dataclasses.fields(OptimConfig)}
    for key, value in optimizer.items():
        dotted = _OPTIMIZER_ALIASES.get(key)
        if dotted is None:
            if key == "steps":
                dotted = "steps"
            elif key in grpo_keys:
                dotted = f"grpo.{key}"
            elif key in optim_keys:
                dotted = f"optim.{key}"
            else:
                raise ConfigError(
                    "unknown optimizer setting; use GRPOConfig or OptimConfig field names, "
                    "'steps', or learningRate/clipEpsilon/miniBatchSize/entropyCoef",
                    path="optimizer",
                    key=key,
                )
        section, _, name = dotted.rpartition(".")
        (data[section] if section else data)[name] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) else v
    return out


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    """One prompt candidate of a :class:`FineTunedModel` and what training made of it."""

    id: int
    """The candidate's id (``choice`` in samples and exports)."""
    instruction: str
    """Its instruction (or template)."""
    demos: tuple[Demo, ...]
    """Its few-shot demonstrations."""
    temperature: float | None
    """Its sampling temperature (None: the endpoint's)."""
    origin: str
    """``seed``, ``reflection`` or ``demos``."""
    probability: float
    """Its probability under the trained policy."""
    rollouts: int
    """Training rollouts that used it."""
    mean_reward: float
    """Their mean reward (NaN if none)."""


class FineTunedModel:
    """A trained prompt policy bound to an endpoint: the result of :func:`finetune`.

    Use it as an async context manager (``async with model:``) or call :meth:`aclose`; it
    owns the client :func:`finetune` or :meth:`load` opened for it (not one you passed in).

    Attributes:
        policy: the trained :class:`~engine.policies.prompt.PromptPolicy`.
        config: the run config it was trained with.
        summary: the training run's :class:`~engine.training.trainer.RunSummary` (None after load).
        history: the metrics of every training step (empty after load).

    The training rewarder is kept for :meth:`evaluate`; the clients passed as ``clients`` are
    the ones :meth:`aclose` closes.
    """

    def __init__(
        self,
        policy: PromptPolicy,
        config: RunConfig,
        *,
        clients: Sequence[Client] = (),
        rewarder: Rewarder | None = None,
        summary: RunSummary | None = None,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.policy = policy
        self.config = config
        self.summary = summary
        self.history = list(history)
        self._rewarder = rewarder
        self._owned = list(clients)

    # ------------------------------------------------------------------ inspection

    @property
    def best_candidate(self) -> Candidate:
        """The served candidate (what greedy :meth:`generate` uses): the best on the held-out
        examples when the run had them (:meth:`PromptPolicy.served`), else the most probable."""
        return self.policy.served()

    @property
    def best_prompt(self) -> str:
        """The best candidate's prompt as text, ``{text}`` marking where the input goes."""
        cand = self.best_candidate
        if self.policy.mode == "chat":
            msgs = render_messages(cand, "{text}")
            return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in msgs)
        return render_completion(cand, "{text}", self.policy.fmt)

    @property
    def candidates(self) -> list[CandidateInfo]:
        """Every live candidate with its probability, most probable first."""
        out = []
        for cand, prob in self.policy.probabilities():
            statistics = self.policy.candidate_statistics(cand.id)
            n, mean = statistics.n, statistics.mean_reward
            out.append(
                CandidateInfo(
                    cand.id,
                    cand.instruction,
                    cand.demos,
                    cand.temperature,
                    cand.origin,
                    prob,
                    n,
                    mean,
                )
            )
        return out

    # ------------------------------------------------------------------ use

    async def generate(
        self,
        text: str | Example | Mapping[str, Any],
        *,
        sample: bool = False,
        seed: int | None = None,
    ) -> str:
        """The model's answer to ``text`` (a string, an Example, or ``{"text": ...}``).

        Greedy by default: the served candidate (:attr:`best_candidate`) at temperature 0.
        ``sample=True`` draws
        the candidate from the policy (seeded by ``seed``) at its own temperature. The answer
        is stripped of surrounding whitespace.

        Raises:
            EndpointError: the request failed after the client's retries.
        """
        example = _as_example(text)
        rng = np.random.default_rng(seed) if sample else None
        cand = self.policy.served() if rng is None else self.policy.choose(rng)
        comp = await self.policy.complete(cand, example, greedy=not sample, seed=seed)
        return str(comp.choices[0].text).strip()

    async def evaluate(
        self,
        examples: str | Path | Iterable[Mapping[str, Any] | Example],
        *,
        rewarder: Rewarder | None = None,
        sample: bool = False,
        concurrency: int = 16,
    ) -> EvalResult:
        """Score the model on ``examples`` (default rewards: those it was trained with, or the
        config's); returns an :class:`~engine.rollout.evaluate.EvalResult`."""
        rew = rewarder or self._rewarder
        if rew is None:
            rew = build_rewarder(self.config, judge_client=self.policy.client)
        return await evaluate_policy(
            self.policy,
            load_examples(examples),
            rew,
            greedy=not sample,
            concurrency=concurrency,
        )

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the model (config, candidates, logits) as a checkpoint directory, atomically.

        ``python -m engine eval --checkpoint PATH`` and :meth:`load` read it; it holds data
        only (JSON and ``.npz``), never the API key.
        """
        arrays, pmeta = self.policy.state()
        meta = {
            "model": "grpo-engine/finetuned-prompt-policy",
            "config": to_dict(self.config),
            "policy": pmeta,
            "step": self.policy.version,
            "best_prompt": self.best_prompt,
            "summary": self.summary.to_dict() if self.summary is not None else None,
        }
        return save_checkpoint(path, {f"policy/{k}": v for k, v in arrays.items()}, meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        client: Client | None = None,
        endpoint: EndpointConfig | Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
        trust_saved_config: bool = False,
    ) -> FineTunedModel:
        """A model saved by :meth:`save` (or a prompt-policy or hf run's checkpoint or run
        dir); an hf one is an :class:`HFFineTunedModel` (see :meth:`HFFineTunedModel.restore`).

        Args:
            client: the client to generate with (not closed by the model); default a new one
                for ``endpoint``, owned by the model.
            endpoint: replaces (EndpointConfig) or updates (dict) the saved endpoint.
            overrides: ``KEY=VALUE`` settings over the saved config (as ``--set`` takes them),
                e.g. ``hf.model=DIR`` where the base model has moved.
            trust_saved_config: use the endpoint (``provider``, ``base_url``,
                ``api_key_env``, also of ``[judge]``) and the ``module:function`` reward
                functions the saved config names, printing them on stderr first. Without it
                they come from ``client``, ``endpoint`` and ``overrides`` only: a saved model
                is data and does not decide where requests and keys go, or what is imported
                (:mod:`engine.training.saved`).

        Raises:
            CheckpointError: not a prompt-policy or hf checkpoint, or an incompatible one (an
                hf adapter of another base model names both).
            ConfigError: the endpoint needs a key that is not set; a bad override; the saved
                config names an endpoint or reward imports that were not given (without
                ``trust_saved_config``).
        """
        arrays, meta, found = load_policy_checkpoint(path)
        layer = None
        if endpoint is not None:
            given = to_dict(endpoint) if isinstance(endpoint, EndpointConfig) else endpoint
            layer = {"endpoint": dict(given)}
        config = resolve_saved_config(
            meta["config"],
            source=str(found),
            overrides=list(overrides),
            layer=layer,
            trust=trust_saved_config,
            client_given=client is not None,
            trust_hint="trust_saved_config=True",
            user_hint="endpoint= or overrides=, e.g.",
        ).config
        if config.policy == "hf":
            return HFFineTunedModel.restore(found, arrays, meta, config)
        if config.policy != "prompt":
            raise CheckpointError(
                f"{path}: a {config.policy!r} checkpoint, not a prompt policy or an hf model"
            )
        owned = []
        if client is None:
            client = make_client(config)
            owned.append(client)
        policy = PromptPolicy(
            client, config.prompt, endpoint=config.endpoint, candidates=[("", (), None)]
        )
        with restoring(found):  # a malformed meta.json: one CheckpointError
            policy.load_state(arrays, meta["policy"])
        return cls(policy, config, clients=owned)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the clients this model owns; idempotent."""
        owned, self._owned = self._owned, []
        for c in owned:
            await c.aclose()

    async def __aenter__(self) -> FineTunedModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        best = self.policy.probabilities()[0]
        return (
            f"FineTunedModel(candidates={len(self.policy.probabilities())}, "
            f"best={best[0].instruction[:40]!r} p={best[1]:.2f})"
        )


_HF_MODEL = "grpo-engine/finetuned-hf-policy"
_PEFT_CONFIG = "adapter_config.json"


class HFFineTunedModel(FineTunedModel):
    """An open-weight model whose weights :func:`finetune` trained (``policy = "hf"``).

    :meth:`save` writes a directory that is at once a PEFT adapter (``adapter_config.json``
    and ``adapter_model.safetensors``, written by peft itself: ``peft.PeftModel.
    from_pretrained(base, DIR)`` loads it, and so does vLLM's ``--lora-modules name=DIR`` or
    its ``POST /v1/load_lora_adapter``) and an engine checkpoint (``meta.json``: the run
    config, the base model's name and fingerprint; ``arrays.npz``: the same weights), so
    ``python -m engine eval --checkpoint DIR`` and ``compare --a DIR`` read it. Nothing in it
    is pickled. A fully fine-tuned model is saved as the engine checkpoint and as a
    transformers model directory (``config.json``, ``model.safetensors`` and the tokenizer,
    by ``save_pretrained``): ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it, and so
    does ``vllm serve DIR``.

    Attributes:
        policy: the trained :class:`~engine.policies.hf.policy.HFPolicy`.
        step: the optimizer steps behind its weights.
    """

    policy: HFPolicy  # type: ignore[assignment]

    def __init__(
        self,
        policy: HFPolicy,
        config: RunConfig,
        *,
        clients: Sequence[Client] = (),
        rewarder: Rewarder | None = None,
        summary: RunSummary | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        step: int | None = None,
    ) -> None:
        super().__init__(
            policy,  # type: ignore[arg-type]
            config,
            clients=clients,
            rewarder=rewarder,
            summary=summary,
            history=history,
        )
        self.step = step if step is not None else (summary.steps_done if summary else 0)
        self._snapshot: Any = None

    @property
    def best_candidate(self) -> Candidate:
        """Not defined: an hf model has no prompt candidates."""
        raise TypeError("an hf model has no prompt candidates: it trains the model's weights")

    @property
    def best_prompt(self) -> str:
        """The prompt template the model answers behind (``hf.prompt_template``)."""
        return self.policy.hf.prompt_template

    @property
    def candidates(self) -> list[CandidateInfo]:
        """Empty: an hf model has no prompt candidates."""
        return []

    async def generate(
        self,
        text: str | Example | Mapping[str, Any],
        *,
        sample: bool = False,
        seed: int | None = None,
    ) -> str:
        """The model's answer to ``text`` behind its prompt template, in a worker thread:
        greedy by default, ``sample=True`` samples at ``hf.temperature`` seeded by ``seed``;
        stripped of surrounding whitespace."""
        if self._snapshot is None:
            self._snapshot = self.policy.snapshot(self.step)
        rng = np.random.default_rng(seed)
        out = await self.policy.generate(
            self._snapshot, _as_example(text), 1, rng, greedy=not sample
        )
        return str(out[0].text).strip()

    def save(self, path: str | Path) -> Path:
        """Write the PEFT adapter and the engine checkpoint into ``path``, atomically (see
        the class docstring); replaces an existing directory there."""
        arrays, pmeta = self.policy.state()
        meta = {
            "model": _HF_MODEL,
            "config": to_dict(self.config),
            "policy": pmeta,
            "step": self.step,
            "base_model": {"model": pmeta["base_model"], "fingerprint": pmeta["fingerprint"]},
            "adapter_format": None if self.policy.hf.full_finetune else "peft",
            "summary": self.summary.to_dict() if self.summary is not None else None,
        }
        target = Path(path)
        tmp = temp_name(target)  # random: nothing can be planted there (engine.files)
        try:
            save_checkpoint(tmp, {f"policy/{k}": v for k, v in arrays.items()}, meta)
            if self.policy.hf.full_finetune:
                self.policy.save_pretrained(tmp)
            else:
                self.policy.save_adapter(tmp)
            _replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def restore(
        cls,
        path: Path,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        config: RunConfig,
    ) -> HFFineTunedModel:
        """The model of the checkpoint at ``path`` (read by :meth:`FineTunedModel.load`):
        ``config.hf.model`` loaded, then the checkpoint's base model checked against it (an
        adapter of another base model is one CheckpointError naming both) and its weights
        restored; where ``path`` holds a PEFT adapter, the weights come from it, validated
        against its config and the model (:meth:`~engine.policies.hf.policy.HFPolicy.
        read_adapter`), never obeyed.

        Raises:
            CheckpointError: another base model, another adapter, or malformed files.
            ConfigError: the base model cannot be loaded.
        """
        policy = build_hf_policy(config.hf, seed=config.seed)
        policy_meta = meta.get("policy")
        if not isinstance(policy_meta, Mapping):
            raise CheckpointError(f"{path}: no policy metadata")
        policy.load_state(arrays, policy_meta)
        if (path / _PEFT_CONFIG).is_file():
            policy.load_state(policy.read_adapter(path), policy_meta)
        return cls(policy, config, step=int(meta.get("step", 0)))

    def __repr__(self) -> str:
        return f"HFFineTunedModel(model={self.policy.source!r}, step={self.step})"


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename the finished directory ``tmp`` to ``target``, replacing what was there."""
    old = None
    if os.path.lexists(target):  # a symlink there is renamed away, never followed
        old = target.parent / f".{target.name}.old-{secrets.token_hex(8)}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _as_example(text: str | Example | Mapping[str, Any]) -> Example:
    if isinstance(text, Example):
        return text
    if isinstance(text, str):
        return Example("input", text, {"text": text})
    if "input" in text or "prompt" in text:
        return parse_example(dict(text), path="<input>", line=1)
    return parse_example({"input": dict(text)}, path="<input>", line=1)


# ----------------------------------------------------------------------------- finetune


async def finetune(
    train_data: str | Path | Iterable[Mapping[str, Any] | Example],
    *,
    base_prompt: str | None = None,
    reward: Rewarder | RewardItem | Sequence[RewardItem] | None = None,
    reward_prompt: str | None = None,
    optimizer: GRPOConfig | Mapping[str, Any] | None = None,
    endpoint: EndpointConfig | Mapping[str, Any] | None = None,
    config: RunConfig | None = None,
    eval_data: str | Path | Iterable[Mapping[str, Any] | Example] | None = None,
    out: str | Path | None = None,
    on_batch_complete: Callable[[BatchMetrics], Any] | None = None,
    instructions: Sequence[str] = (),
    prompt: PromptPolicyConfig | Mapping[str, Any] | None = None,
    client: Client | None = None,
    judge_client: Client | None = None,
    judge_options: Mapping[str, Any] | None = None,
    export_groups: str | Path | None = None,
    hf: HFConfig | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> FineTunedModel:
    """Fine-tune a model you cannot retrain with GRPO over prompt candidates, or, with ``hf``
    (or a ``config`` whose policy is ``hf``), an open-weight model's own weights (LoRA) with
    token-level GRPO in-process: no endpoint is needed then (unless ``reward_prompt`` adds a
    judge), and the result is an :class:`HFFineTunedModel`.

    Args:
        train_data: ``TrainingExample`` dicts, Examples, or a JSONL path.
        base_prompt: the starting instruction (or a ``{text}`` template); candidate 0. With
            ``hf``: the model's prompt template (it must hold ``{text}``); default the
            config's ``hf.prompt_template``.
        reward: a reward function ``(example, text) -> float`` (sync or async), a judge, a
            list of them, or a Rewarder; default ``[reward]`` of the config, else
            ``exact_match`` against the examples' ``output.generated``.
        reward_prompt: a rubric: adds an LLM judge on ``judge_client``.
        optimizer: GRPO and optimizer settings (see :func:`finetune_config`).
        endpoint: the model endpoint, an EndpointConfig or a dict of its fields.
        config: a full run config instead of :data:`PROMPT_DEFAULTS`.
        eval_data: held-out examples; default: ``data.eval_fraction`` of ``train_data``.
        out: write metrics, events, checkpoints and a summary here; None writes nothing.
        on_batch_complete: called with a BatchMetrics after each step.
        instructions: more seed instructions besides the base prompt.
        prompt: prompt policy settings (``max_candidates``, ``max_demos``, ``propose_every``).
        client: generate with this client (not closed by the model); default a new one for
            ``endpoint``, owned by the returned model.
        judge_client: judge with this client; default the generation client, or a new one
            for ``config.judge`` when set.
        judge_options: options for the judge (passed to its constructor).
        export_groups: also write every scored group to this JSONL file.
        hf: the open-weight model and its LoRA (an HFConfig or a dict of its fields, e.g.
            ``{"model": "gemma3-270m", "lora_rank": 8}``); selects the hf policy.
        overwrite: replace a run already in ``out`` (its metrics, checkpoints and summary
            are deleted first); without it such a directory is refused.

    Returns:
        The :class:`FineTunedModel`; close it (``async with``) to close its client.

    Raises:
        ConfigError: bad settings; DataError: bad training data; EndpointError only where the
        run cannot continue (generation failures are recorded per rollout, not raised).
    """
    run_config = finetune_config(
        base_prompt=base_prompt,
        instructions=instructions,
        optimizer=optimizer,
        endpoint=endpoint,
        config=config,
        reward_prompt=reward_prompt,
        prompt=prompt,
        hf=hf,
    )
    examples = load_examples(train_data)
    if not examples:
        raise ConfigError("train_data has no examples", key="train_data")
    heldout = load_examples(eval_data) if eval_data is not None else None
    run = _FinetuneRun(run_config, out, on_batch_complete, export_groups, overwrite=overwrite)
    return await run.train(examples, heldout, reward, client, judge_client, judge_options)


class _FinetuneRun:
    """One :func:`finetune` run: its event log, the clients it opened (the returned model
    owns them), and the training.

    Attributes:
        config: the run config.
        out: the output directory, or None.
        events: the run's event log; every client it opens writes to it.
        owned: the clients it built, closed when training fails, else by the model.
    """

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None,
        on_batch_complete: Callable[[BatchMetrics], Any] | None,
        export_groups: str | Path | None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.overwrite = overwrite
        self.out = out
        self.on_batch_complete = on_batch_complete
        self.export_groups = export_groups
        self.events = EventLog(Path(out) / "events.jsonl" if out is not None else None)
        self.spend = SpendMeter.from_config(config)  # the clients made here share the budget
        self.owned: list[Client] = []

    def clients(
        self, client: Client | None, judge_client: Client | None
    ) -> tuple[Client, Client | None]:
        """The generation client (``client``, else a new one) and the judge client
        (``judge_client``, else a new one for ``[judge]`` when set, else None)."""
        if client is None:
            client = make_client(self.config, events=self.events, spend=self.spend)
            self.owned.append(client)
        if judge_client is None and self.config.judge is not None:
            judge_client = make_client(
                self.config, judge=True, events=self.events, spend=self.spend
            )
            self.owned.append(judge_client)
        return client, judge_client

    def manager(self) -> type[TrainingManager]:
        """The trainer class of ``cluster.backend`` (:data:`~engine.training.trainer.TRAINERS`):
        :class:`~engine.cluster.training.ClusterTrainingManager` for ``"ray"``."""
        backend = self.config.cluster.backend
        if backend not in TRAINERS:
            raise ConfigError(
                f"cluster.backend = {backend!r}: its trainer is not loaded; call "
                "engine.finetune (it loads engine.cluster), or import engine.cluster.training "
                "first",
                key="cluster.backend",
            )
        return TRAINERS[backend]

    def hf_judge_client(self, client: Client | None, judge_client: Client | None) -> Client | None:
        """The judge client of an hf run: ``judge_client``, else ``client``, else a new one
        for ``[judge]`` (or ``[endpoint]``) when ``reward.judge_prompt`` is set, else None."""
        judge_client = judge_client or client
        if judge_client is None and needs_endpoint(self.config):
            judge_client = make_client(
                self.config, judge=True, events=self.events, spend=self.spend
            )
            self.owned.append(judge_client)
        return judge_client

    async def build(
        self,
        examples: list[Example],
        heldout: list[Example] | None,
        reward: Rewarder | RewardItem | Sequence[RewardItem] | None,
        client: Client | None,
        judge_client: Client | None,
        judge_options: Mapping[str, Any] | None,
    ) -> tuple[PromptPolicy | HFPolicy, Rewarder]:
        """The policy (an hf model is loaded in a worker thread) and the rewards."""
        if self.config.policy == "hf":
            judge = self.hf_judge_client(client, judge_client)
            load = functools.partial(build_hf_policy, self.config.hf, seed=self.config.seed)
            hf_policy = await anyio.to_thread.run_sync(load)
            return hf_policy, finetune_rewarder(self.config, reward, judge, judge_options)
        client, judge_client = self.clients(client, judge_client)
        policy = build_prompt_policy(
            self.config, client, examples=examples, separate_heldout=heldout is not None
        )
        rewarder = finetune_rewarder(self.config, reward, judge_client or client, judge_options)
        return policy, rewarder

    async def train(
        self,
        examples: list[Example],
        heldout: list[Example] | None,
        reward: Rewarder | RewardItem | Sequence[RewardItem] | None,
        client: Client | None,
        judge_client: Client | None,
        judge_options: Mapping[str, Any] | None,
    ) -> FineTunedModel:
        """Build the clients, the policy and the rewards, train, and return the model (which
        then owns the clients it was not given); on failure, close them and the event log."""
        try:
            policy, rewarder = await self.build(
                examples, heldout, reward, client, judge_client, judge_options
            )
            async with self.manager()(
                self.config,
                policy=policy,
                rewarder=rewarder,
                train=examples,
                heldout=heldout,
                on_batch_complete=self.on_batch_complete,
                out=self.out,
                events=self.events,
                export_groups=self.export_groups,
                spend=self.spend,
                overwrite=self.overwrite,
            ) as trainer:
                summary = await trainer.run()
                history = list(trainer.history)
        except BaseException:
            for c in self.owned:
                await c.aclose()
            self.events.close()
            raise
        self.events.close()
        model_cls = HFFineTunedModel if self.config.policy == "hf" else FineTunedModel
        return model_cls(
            policy,  # type: ignore[arg-type]
            self.config,
            clients=self.owned,
            rewarder=rewarder,
            summary=summary,
            history=history,
        )
