"""Configuration: frozen dataclasses, loaded from TOML with ``--set key=value`` overrides.

Every field carries a docstring (the string literal below it); ``python -m engine run --help``
and the README's config reference are generated from them. Loading validates types and ranges
and names the file and the key on any error; nothing is filled in later.

Example::

    cfg = load_config("examples/local.toml", overrides=["grpo.beta=0.04", "steps=20"])
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from ..errors import ConfigError

__all__ = (
    "DataConfig",
    "EndpointConfig",
    "GRPOConfig",
    "LimitsConfig",
    "OptimConfig",
    "PromptPolicyConfig",
    "RetryConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TinyLMConfig",
    "TrainerConfig",
    "config_reference",
    "field_docs",
    "load_config",
    "to_dict",
)


@dataclass(frozen=True, slots=True)
class GRPOConfig:
    """The GRPO algorithm: groups, advantages, the clipped surrogate, KL and entropy."""

    group_size: int = 8
    """G: completions sampled per prompt; advantages are relative within a group."""
    epsilon: float = 0.2
    """Lower clip range of the probability ratio: ratio >= 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher): ratio <= 1 + epsilon_high; None means epsilon."""
    beta: float = 0.01
    """KL penalty coefficient toward the frozen reference policy (k3 estimator); 0 disables."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (added to the objective, so it encourages exploration)."""
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """Loss aggregation: grpo = mean over tokens per sequence then over sequences; dapo = mean
    over all tokens in the batch; dr_grpo = sum over tokens divided by a fixed max length."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: group = (r - mean) / (std + eps) within the group (GRPO); batch = divide
    by the batch std; none = only subtract the group mean (Dr. GRPO)."""
    leave_one_out: bool = False
    """Use the mean of the other G-1 members as each member's baseline (RLOO)."""
    drop_zero_std: bool = False
    """Drop groups whose rewards all equal (zero advantage) before the update (DAPO)."""
    mini_batch_size: int = 4
    """Groups accumulated by the learner before one optimizer step (the spec's miniBatchSize)."""
    epochs: int = 1
    """Passes over each accumulated mini-batch (the spec's epochs); > 1 makes clipping matter."""
    max_staleness: int = 1
    """Policy versions generation may run ahead of the learner; older groups are dropped."""


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """Adam(W), the learning-rate schedule and gradient clipping."""

    lr: float = 0.01
    """Peak learning rate (the spec's learningRate)."""
    beta1: float = 0.9
    """Adam first-moment decay."""
    beta2: float = 0.999
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 gives plain Adam."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warm-up: constant, cosine decay or linear decay."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to lr."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr for the decaying schedules."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping."""


@dataclass(frozen=True, slots=True)
class TinyLMConfig:
    """The embedded numpy language model (the default policy)."""

    task: Literal["reverse", "sort", "copy"] = "reverse"
    """Built-in verifiable task: reverse, sort or copy a short digit string."""
    prompt_len: int = 4
    """Digits per prompt."""
    vocab_digits: int = 6
    """How many distinct digits prompts are drawn from (vocabulary size minus specials)."""
    context: int = 8
    """Tokens of left context the model sees (window of the causal MLP)."""
    embed_dim: int = 16
    """Token embedding width."""
    hidden: int = 128
    """Hidden layer width."""
    temperature: float = 1.0
    """Sampling temperature during training rollouts."""
    init_scale: float = 0.5
    """Standard deviation of the initial embedding and hidden-layer weights; the output layer
    starts at zero, so the initial policy is uniform (chance-level reward)."""


@dataclass(frozen=True, slots=True)
class PromptPolicyConfig:
    """The prompt policy: logits over instruction x demo-set candidates for hosted models."""

    instructions: tuple[str, ...] = ()
    """Seed instruction variants; the base prompt is always the first candidate."""
    max_demos: int = 3
    """Few-shot demos per demo set."""
    propose_every: int = 0
    """Every K steps ask the model for new instructions from best and worst rollouts; 0 = never."""
    max_candidates: int = 16
    """Prune the weakest candidates beyond this many."""


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """An OpenAI-compatible endpoint for generation (and judges unless overridden)."""

    provider: Literal["local", "openai", "openrouter"] = "local"
    """Preset: local (any base URL, no key), openai (OPENAI_API_KEY, OPENAI_BASE_URL) or
    openrouter (OPENROUTER_API_KEY, OPENROUTER_MODEL)."""
    base_url: str = ""
    """Base URL ending in /v1; empty means the provider's default."""
    model: str = ""
    """Model name sent in requests; empty means the provider's default."""
    api_key_env: str = ""
    """Environment variable holding the key; empty means the provider's default. The key itself
    never appears in config, logs or files."""
    mode: Literal["chat", "completions"] = "chat"
    """chat uses /v1/chat/completions; completions uses /v1/completions (right for base models)."""
    max_tokens: int = 64
    """Completion token cap per sample."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    logprobs: bool = False
    """Ask for token logprobs (exported for weight trainers)."""
    use_n: bool = True
    """Ask for G samples in one request with n; falls back to fan-out when ignored."""
    timeout: float = 60.0
    """Read timeout per attempt, seconds."""
    deadline: float = 300.0
    """Deadline per request covering queueing and retries, seconds."""
    stop: tuple[str, ...] = ()
    """Stop sequences."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Client-side limits: request rate, token budget, concurrency."""

    rpm: float | None = None
    """Requests per minute; None for no limit."""
    tpm: float | None = None
    """Tokens per minute (prompt + completion), reserve-then-settle; None for no limit."""
    tpm_refund: bool = True
    """Give back the unused part of a token reservation once real usage is known. Set false
    for servers that charge prompt + max_tokens at admission and never refund (OpenAI-style
    limiters): refunding there over-sends and draws 429s."""
    burst_seconds: float = 1.0
    """Seconds of rate the rpm and tpm buckets hold: up to ``rpm * burst_seconds / 60``
    requests (and tokens likewise) go out at once after a quiet spell or a 429 pause.
    Hosted APIs document that per-minute limits may be enforced over shorter windows (60 per
    minute as 1 per second), so the default sends no burst beyond one second's worth; 60 uses
    a whole minute's allowance at once where a server permits it (a faster first minute)."""
    max_concurrency: int = 64
    """Requests in flight at once."""
    adaptive: bool = False
    """Adaptive concurrency: additive increase, multiplicative decrease on 429s and timeouts."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry policy for endpoint requests."""

    max_attempts: int = 6
    """Attempts per request including the first."""
    backoff_base: float = 1.0
    """Full-jitter backoff base, seconds."""
    backoff_cap: float = 60.0
    """Full-jitter backoff cap, seconds."""


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Reward functions and judges."""

    functions: tuple[str, ...] = ()
    """Built-in reward function names, or 'module:function' import paths."""
    weights: tuple[float, ...] = ()
    """Weights of the reward functions (default 1 each)."""
    judge_prompt: str = ""
    """Rubric for an LLM judge scoring each rollout 0-1; empty disables the judge."""
    judge_weight: float = 1.0
    """Weight of the judge reward."""
    group_judge: bool = False
    """Score all G completions of a group in one judge call, relative to each other."""
    normalize: bool = False
    """Automatic reward scaling: running mean/std normalization of the combined reward."""
    format_failure_reward: float = 0.0
    """Reward given to outputs that fail to parse into the module's signature."""


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """How a group is fanned out and completed: admission, stragglers, partial groups."""

    partial_group: Literal["retry", "shrink", "drop"] = "retry"
    """When members fail: retry = re-request the missing members (up to member_retries) and
    shrink if still short; shrink = keep the scored members if at least min_group_size; drop =
    drop the whole group. Logged and counted either way."""
    member_retries: int = 1
    """Re-requests of failed members per group under the retry policy."""
    min_group_size: int = 2
    """Fewest scored members a group may keep; fewer and it is dropped (counted)."""
    oversample: int = 0
    """Request G + oversample samples and keep the first G to finish, cancelling the rest
    (counted, so the bias toward fast completions is visible)."""
    max_groups_in_flight: int = 0
    """Groups generating at once; 0 = as many as the limits admit (whole groups are admitted
    together so none is left half started)."""


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Datasets: JSONL files or the built-in task."""

    train: str = ""
    """Training JSONL ({"input": {"text": ...}} or {"prompt": ...} lines); empty = built-in task."""
    eval: str = ""
    """Held-out JSONL; empty = split eval_fraction off the training data."""
    eval_fraction: float = 0.1
    """Fraction held out for evaluation when no eval file is given."""
    batch_size: int = 16
    """Prompts per batch; each becomes a group of G rollouts."""
    shuffle: bool = True
    """Shuffle prompts each epoch (seeded)."""
    num_examples: int = 2000
    """Size of the built-in task's dataset."""


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """The training loop: evaluation, early stopping, checkpoints."""

    eval_every: int = 10
    """Evaluate on the held-out split every N steps; 0 disables."""
    eval_size: int = 64
    """Held-out prompts per evaluation."""
    checkpoint_every: int = 10
    """Write a checkpoint every N steps; 0 only at the end."""
    keep_checkpoints: int = 3
    """How many recent checkpoints to keep."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without improvement; 0 disables."""
    early_stop_min_delta: float = 0.0
    """Improvement needed to reset the patience counter."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: what to train, on what, with which algorithm, and where outputs go."""

    steps: int = 150
    """Optimizer steps to run."""
    seed: int = 0
    """Seed of every random choice (data order, sampling, initialization)."""
    out: str = "runs/latest"
    """Output directory: metrics.jsonl, events.jsonl, checkpoints/, summary.json."""
    policy: Literal["tinylm", "prompt"] = "tinylm"
    """tinylm = the embedded numpy LM; prompt = prompt policy over an endpoint."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO algorithm settings."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer settings."""
    tinylm: TinyLMConfig = field(default_factory=TinyLMConfig)
    """Embedded LM settings."""
    prompt: PromptPolicyConfig = field(default_factory=PromptPolicyConfig)
    """Prompt policy settings."""
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    """Generation endpoint."""
    judge: EndpointConfig | None = None
    """Judge endpoint; None uses the generation endpoint."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Client-side limits."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Retry policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Rewards and judges."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Group fan-out, stragglers and partial groups."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Evaluation, early stop and checkpoint cadence."""


# ----------------------------------------------------------------------------- validation

_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    # key: (min, max, min_exclusive)
    "steps": (1, None, False),
    "grpo.group_size": (2, None, False),
    "grpo.epsilon": (0.0, 1.0, True),
    "grpo.epsilon_high": (0.0, None, True),
    "grpo.beta": (0.0, None, False),
    "grpo.entropy_coef": (0.0, None, False),
    "grpo.mini_batch_size": (1, None, False),
    "grpo.epochs": (1, None, False),
    "grpo.max_staleness": (0, None, False),
    "optim.lr": (0.0, None, True),
    "optim.beta1": (0.0, 0.999999, False),
    "optim.beta2": (0.0, 0.999999, False),
    "optim.eps": (0.0, None, True),
    "optim.weight_decay": (0.0, None, False),
    "optim.warmup_steps": (0, None, False),
    "optim.min_lr_ratio": (0.0, 1.0, False),
    "optim.max_grad_norm": (0.0, None, True),
    "tinylm.prompt_len": (1, 16, False),
    "tinylm.vocab_digits": (2, 10, False),
    "tinylm.context": (1, 64, False),
    "tinylm.embed_dim": (1, None, False),
    "tinylm.hidden": (1, None, False),
    "tinylm.temperature": (0.0, None, True),
    "tinylm.init_scale": (0.0, None, True),
    "endpoint.max_tokens": (1, None, False),
    "endpoint.temperature": (0.0, None, False),
    "endpoint.top_p": (0.0, 1.0, True),
    "endpoint.timeout": (0.0, None, True),
    "endpoint.deadline": (0.0, None, True),
    "limits.rpm": (0.0, None, True),
    "limits.tpm": (0.0, None, True),
    "limits.burst_seconds": (0.0, None, True),
    "limits.max_concurrency": (1, None, False),
    "retry.max_attempts": (1, None, False),
    "retry.backoff_base": (0.0, None, False),
    "retry.backoff_cap": (0.0, None, False),
    "rollout.member_retries": (0, None, False),
    "rollout.min_group_size": (1, None, False),
    "rollout.oversample": (0, None, False),
    "rollout.max_groups_in_flight": (0, None, False),
    "data.eval_fraction": (0.0, 1.0, False),
    "data.batch_size": (1, None, False),
    "data.num_examples": (2, None, False),
    "trainer.eval_every": (0, None, False),
    "trainer.eval_size": (1, None, False),
    "trainer.checkpoint_every": (0, None, False),
    "trainer.keep_checkpoints": (1, None, False),
    "trainer.early_stop_patience": (0, None, False),
    "trainer.early_stop_min_delta": (0.0, None, False),
    "prompt.max_demos": (0, None, False),
    "prompt.propose_every": (0, None, False),
    "prompt.max_candidates": (1, None, False),
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"array of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, path: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists to tuples)."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, path)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(
            f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", path=path, key=key
        )
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"expected one of {_type_name(tp)}, got {value!r}", path=path, key=key
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}",
                path=path,
                key=key,
            )
        inner = get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]", path) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"expected a table, got {type(value).__name__} {value!r}", path=path, key=key
            )
        return _build(tp, value, key, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", path=path, key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"expected an integer, got {type(value).__name__} {value!r}", path=path, key=key
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"expected a number, got {type(value).__name__} {value!r}", path=path, key=key
            )
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, got {value!r}", path=path, key=key)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(
                f"expected a string, got {type(value).__name__} {value!r}", path=path, key=key
            )
        return value
    raise ConfigError(f"unsupported type {tp!r}", path=path, key=key)  # pragma: no cover


def _check_range(key: str, value: Any, path: str | None) -> None:
    rng = _RANGES.get(key)
    if rng is None or value is None:
        return
    lo, hi, lo_exclusive = rng
    if lo is not None and (value <= lo if lo_exclusive else value < lo):
        op = ">" if lo_exclusive else ">="
        raise ConfigError(f"must be {op} {lo}, got {value!r}", path=path, key=key)
    if hi is not None and value > hi:
        raise ConfigError(f"must be <= {hi}, got {value!r}", path=path, key=key)


def _build(cls: type, data: Mapping[str, Any], prefix: str, path: str | None) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(
                f"unknown key; known keys here: {', '.join(sorted(names))}", path=path, key=full
            )
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        value = _coerce(v, hints[k], full, path)
        _check_range(full, value, path)
        kwargs[k] = value
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value", path="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an invalid key", path="--set")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string: --set endpoint.model=gpt-4o-mini
    except RecursionError:
        raise ConfigError(f"override {key!r}: value nested too deeply", path="--set") from None
    return key.split("."), value


def _merge(base: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = base
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Load a :class:`RunConfig` from a TOML file (optional) plus ``key=value`` overrides.

    Raises:
        ConfigError: unreadable file, TOML syntax error (with line), unknown key, wrong type or
            out-of-range value; the message names the file (or ``--set``) and the key.
    """
    data: dict[str, Any] = dict(base or {})
    spath = str(path) if path is not None else None
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror}", path=spath) from None
        try:
            data.update(tomllib.loads(raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise ConfigError("config is not UTF-8 text", path=spath) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", path=spath) from None
        except RecursionError:  # tomllib recurses into nested arrays and inline tables
            raise ConfigError("invalid TOML: nested too deeply", path=spath) from None
    cfg = _build(RunConfig, data, "", spath)
    over = list(overrides)
    if over:
        merged = to_dict(cfg)
        for text in over:
            parts, value = _parse_override(text)
            _merge(merged, parts, value)
        cfg = _build(RunConfig, merged, "", "--set")
    _check_cross(cfg, spath)
    return cfg


def _check_cross(cfg: RunConfig, path: str | None) -> None:
    if cfg.optim.warmup_steps >= cfg.steps and cfg.optim.schedule != "constant":
        raise ConfigError(
            f"warm-up ({cfg.optim.warmup_steps}) must be shorter than steps ({cfg.steps})",
            path=path,
            key="optim.warmup_steps",
        )
    if cfg.reward.weights and len(cfg.reward.weights) != len(cfg.reward.functions):
        raise ConfigError(
            f"{len(cfg.reward.weights)} weights for {len(cfg.reward.functions)} functions",
            path=path,
            key="reward.weights",
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (tuples become lists), suitable for JSON and TOML."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    out = conv(cfg)
    # None cannot be written in TOML; drop Nones so the dict round-trips through load_config.
    return _drop_none(out)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of a config dataclass, read from its source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - source unavailable
        return {}
    tree = ast.parse(inspect.cleandoc(src))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_reference() -> str:
    """The config reference as Markdown: every section, key, type, default and docstring."""
    lines: list[str] = []

    def section(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        docs = field_docs(cls)
        title = f"[{prefix}]" if prefix else "top level"
        lines.append(f"### {title}\n\n{(cls.__doc__ or '').strip()}\n")
        lines.append("| key | type | default | meaning |\n|---|---|---|---|")
        nested = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                nested.append((tp, f.name))
                continue
            if f.name == "judge":
                nested.append((EndpointConfig, "judge"))
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(
                f"| `{f.name}` | {_type_name(tp)} | `{default!r}` | {docs.get(f.name, '')} |"
            )
        lines.append("")
        for tp, name in nested:
            section(tp, f"{prefix}.{name}" if prefix else name)

    section(RunConfig, "")
    return "\n".join(lines)
