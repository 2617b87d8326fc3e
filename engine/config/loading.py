"""Configuration loading: TOML files and ``--set key=value`` overrides into a checked RunConfig.

Loading checks every value against its field's annotation and range, then the rules that
tie fields together, and names the file (or ``--set``) and the key on any error.

Example::

    config = load_config("examples/local.toml", overrides=["grpo.beta=0.04", "steps=20"])
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from ..errors import ConfigError
from .reference import type_name
from .sections import TRACKERS, RunConfig

__all__ = (
    "TORCH_MODULES",
    "given_keys",
    "load_config",
    "require_ray",
    "require_torch",
    "to_dict",
)

TORCH_MODULES = ("torch", "transformers", "peft", "safetensors", "gguf")
"""What ``policy = "hf"`` imports: the ``grpo-engine[torch]`` extra."""

T = TypeVar("T")

_INT64 = 2**63

_ENV_NAME_RE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")
"""An environment name: a built-in's (``calculator``) or ``module:function``."""

Table = dict[str, Any]
"""A TOML table as tomllib decodes it: str keys, TOML values (nested tables are dicts)."""

_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    # key: (min, max, min_exclusive)
    "seed": (0, None, False),
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
    "hf.lora_rank": (1, None, False),
    "hf.lora_alpha": (0.0, None, True),
    "hf.lora_dropout": (0.0, 0.99, False),
    "hf.micro_batch_tokens": (1, None, False),
    "hf.max_new_tokens": (1, None, False),
    "hf.temperature": (0.0, None, True),
    "hf.top_p": (0.0, 1.0, True),
    "hf.tis_cap": (0.0, None, True),
    "endpoint.max_tokens": (1, None, False),
    "endpoint.temperature": (0.0, None, False),
    "endpoint.top_p": (0.0, 1.0, True),
    "endpoint.timeout": (0.0, None, True),
    "endpoint.deadline": (0.0, None, True),
    "endpoint.max_response_bytes": (1024, None, False),
    "limits.rpm": (0.0, None, True),
    "limits.tpm": (0.0, None, True),
    "limits.burst_seconds": (0.0, None, True),
    "limits.max_burst_seconds": (0.0, None, True),
    "limits.max_concurrency": (1, None, False),
    "limits.max_cost_usd": (0.0, None, True),
    "limits.max_requests": (1, None, False),
    "limits.max_total_tokens": (1, None, False),
    "retry.max_attempts": (1, None, False),
    "retry.backoff_base": (0.0, None, False),
    "retry.backoff_cap": (0.0, None, False),
    "retry.max_server_wait": (0.0, None, False),
    "rollout.member_retries": (0, None, False),
    "rollout.min_group_size": (1, None, False),
    "rollout.oversample": (0, None, False),
    "rollout.max_groups_in_flight": (0, None, False),
    "sandbox.cpu_seconds": (0.0, 3600.0, True),
    "sandbox.wall_seconds": (0.0, 3600.0, True),
    "sandbox.memory_mb": (32, None, False),
    "sandbox.max_processes": (1, 4096, False),
    "sandbox.max_output_bytes": (1024, None, False),
    "sandbox.max_file_mb": (0, None, False),
    "sandbox.test_seconds": (0.0, 3600.0, True),
    "sandbox.max_concurrency": (1, 1024, False),
    "environment.max_turns": (1, None, False),
    "environment.deadline": (0.0, None, False),
    "environment.max_tokens": (0, None, False),
    "rollout.straggler_deadline": (0.0, None, False),
    "data.eval_fraction": (0.0, 1.0, False),
    "data.batch_size": (1, None, False),
    "data.num_examples": (2, None, False),
    "trainer.eval_every": (0, None, False),
    "trainer.eval_size": (1, None, False),
    "trainer.checkpoint_every": (0, None, False),
    "trainer.keep_checkpoints": (1, None, False),
    "trainer.early_stop_patience": (0, None, False),
    "trainer.early_stop_min_delta": (0.0, None, False),
    "trainer.max_failed_steps": (0, None, False),
    "prompt.max_demos": (0, None, False),
    "prompt.propose_every": (0, None, False),
    "prompt.minibatch": (1, None, False),
    "prompt.race_calls": (0, None, False),
    "prompt.max_candidates": (1, None, False),
    "tracking.queue_size": (1, None, False),
    "tracking.close_timeout": (0.0, None, True),
    "telemetry.prometheus_port": (0, 65535, False),
    "cluster.connect_timeout": (0.0, None, True),
    "cluster.local_cpus": (0, None, False),
    "cluster.shards": (0, None, False),
    "cluster.shard_cpus": (0.0, None, False),
    "cluster.shard_retries": (0, None, False),
    "cluster.reward_workers": (1, None, False),
    "cluster.reward_cpus": (0.0, None, False),
    "cluster.lease_requests": (1, None, False),
    "cluster.lease_ttl": (0.0, None, True),
}
"""Allowed range of each numeric key: ``(min, max, min_exclusive)``; None is unbounded."""


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Load a :class:`RunConfig` from a TOML file (optional) plus ``key=value`` overrides.

    ``base`` holds values under the file's (a :func:`to_dict` result round-trips). Overrides
    apply last, in order.

    Raises:
        ConfigError: unreadable file, TOML syntax error (with line), unknown key, wrong type or
            out-of-range value; the message names the file (or ``--set``) and the key.
    """
    if base is not None and not isinstance(base, Mapping):  # a saved config that is not one
        raise ConfigError(f"the saved config is not a table: {type(base).__name__}")
    data: Table = dict(base or {})
    where = str(path) if path is not None else None
    if path is not None:
        data.update(_read_toml(Path(path)))
    config = _build(RunConfig, data, "", where)
    texts = list(overrides)
    if texts:
        config = _apply_overrides(config, texts)
    _check_cross(config, where)
    return config


def given_keys(path: str | Path | None = None, overrides: Iterable[str] = ()) -> frozenset[str]:
    """The keys a config file and ``key=value`` overrides set, as :func:`load_config` applies
    them over a ``base``: each top-level key of the file (a section there replaces the base's
    whole section) and each override's dotted key.

    Raises:
        ConfigError: as :func:`load_config` for an unreadable file or a malformed override.
    """
    keys = set(_read_toml(Path(path))) if path is not None else set()
    keys.update(".".join(_parse_override(text)[0]) for text in overrides)
    return frozenset(keys)


def to_dict(config: object) -> Table:
    """A config as plain data (tuples become lists), suitable for JSON and TOML.

    None cannot be written in TOML, so fields set to None are left out; the result loads back
    to an equal config through ``load_config(base=...)``.
    """
    return _drop_none(_plain(config))


def _read_toml(path: Path) -> Table:
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=where) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", path=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=where) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError("invalid TOML: nested too deeply", path=where) from None


def _apply_overrides(config: RunConfig, texts: Sequence[str]) -> RunConfig:
    """``config`` with each ``key=value`` applied in order, checked again as a whole."""
    merged = to_dict(config)
    for text in texts:
        parts, value = _parse_override(text)
        _merge(merged, parts, value)
    return _build(RunConfig, merged, "", "--set")


def _parse_override(text: str) -> tuple[list[str], object]:
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


def _merge(base: Table, parts: Sequence[str], value: object) -> None:
    """Set ``base[parts[0]][parts[1]]...`` to ``value``, creating (or replacing) tables."""
    node = base
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type[T], data: Mapping[str, object], prefix: str, path: str | None) -> T:
    """An instance of the config dataclass ``cls`` from ``data``, every value checked."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for k in data:
        if k not in names:
            raise ConfigError(
                f"unknown key; known keys here: {', '.join(sorted(names))}",
                path=path,
                key=_join(prefix, k),
            )
    kwargs: dict[str, object] = {}
    for k, v in data.items():
        key = _join(prefix, k)
        value = _coerce(v, hints[k], key, path)
        _check_range(key, value, path)
        kwargs[k] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(value: object, tp: object, key: str, path: str | None) -> object:
    """Check ``value`` against the annotation ``tp``; return it converted (lists to tuples)."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return _coerce_union(value, tp, key, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"expected one of {type_name(tp)}, got {value!r}", path=path, key=key)
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _mismatch(type_name(tp), value, key, path)
        inner = get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]", path) for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _mismatch("a table", value, key, path)
        return _build(tp, value, key, path)
    if origin is Mapping:
        return _coerce_mapping(value, tp, key, path)
    return _coerce_scalar(value, tp, key, path)


def _coerce_mapping(value: object, tp: object, key: str, path: str | None) -> object:
    """A table of tables by name (``[prices."model"]``): each value checked, none negative."""
    if not isinstance(value, Mapping):
        raise _mismatch("a table", value, key, path)
    inner = get_args(tp)[1]
    out: dict[str, object] = {}
    for name, item in value.items():
        sub = f'{key}."{name}"'
        if not str(name).strip():
            raise ConfigError("empty name", path=path, key=sub)
        built = _coerce(item, inner, sub, path)
        if dataclasses.is_dataclass(built):
            for f in dataclasses.fields(built):
                number = getattr(built, f.name)
                if isinstance(number, float) and number < 0:
                    raise ConfigError(
                        f"must be >= 0, got {number!r}", path=path, key=f"{sub}.{f.name}"
                    )
        out[str(name)] = built
    return out


def _coerce_union(value: object, tp: object, key: str, path: str | None) -> object:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, path)
        except ConfigError:
            continue
    raise _mismatch(type_name(tp), value, key, path)


def _coerce_scalar(value: object, tp: object, key: str, path: str | None) -> object:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", path=path, key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch("an integer", value, key, path)
        if not -_INT64 <= value < _INT64:  # JSON files, checkpoints and numpy hold 64 bits
            raise ConfigError(f"integer out of the 64-bit range: {value}", path=path, key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _mismatch("a number", value, key, path)
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, got {value!r}", path=path, key=key)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise _mismatch("a string", value, key, path)
        return value
    raise ConfigError(f"unsupported type {tp!r}", path=path, key=key)  # pragma: no cover


def _mismatch(expected: str, value: object, key: str, path: str | None) -> ConfigError:
    return ConfigError(
        f"expected {expected}, got {type(value).__name__} {value!r}", path=path, key=key
    )


def _check_range(key: str, value: object, path: str | None) -> None:
    bounds = _RANGES.get(key)
    if bounds is None or not isinstance(value, int | float):
        return
    lo, hi, lo_exclusive = bounds
    if lo is not None and (value <= lo if lo_exclusive else value < lo):
        op = ">" if lo_exclusive else ">="
        raise ConfigError(f"must be {op} {lo}, got {value!r}", path=path, key=key)
    if hi is not None and value > hi:
        raise ConfigError(f"must be <= {hi}, got {value!r}", path=path, key=key)


def _check_cross(config: RunConfig, path: str | None) -> None:
    """The rules that tie fields together, checked once every field is valid on its own."""
    if config.optim.warmup_steps >= config.steps and config.optim.schedule != "constant":
        raise ConfigError(
            f"warm-up ({config.optim.warmup_steps}) must be shorter than steps ({config.steps})",
            path=path,
            key="optim.warmup_steps",
        )
    _check_hf(config, path)
    _check_environment(config, path)

    if config.rollout.straggler_deadline > 0 and config.rollout.admission != "continuous":
        raise ConfigError(
            'straggler_deadline applies to rollout.admission = "continuous" only (batch '
            "admission waits for every group, so that runs stay reproducible)",
            path=path,
            key="rollout.straggler_deadline",
        )
    _check_report_to(config.report_to, path)
    _check_cluster(config, path)
    reward = config.reward
    if reward.weights and len(reward.weights) != len(reward.functions):
        raise ConfigError(
            f"{len(reward.weights)} weights for {len(reward.functions)} functions",
            path=path,
            key="reward.weights",
        )


def _check_environment(config: RunConfig, path: str | None) -> None:
    """``[environment]``: a name that is a built-in's or a ``module:function`` path, and the
    chat tool protocol only where the requests are chat requests."""
    env = config.environment
    if env.name and not _ENV_NAME_RE.fullmatch(env.name):
        raise ConfigError(
            f"expected a built-in environment name or module:function, got {env.name!r}",
            path=path,
            key="environment.name",
        )
    if env.name and env.tools == "chat" and config.endpoint.mode != "chat":
        raise ConfigError(
            'the chat tool protocol needs endpoint.mode = "chat" (completions mode uses '
            'tools = "text" or "auto")',
            path=path,
            key="environment.tools",
        )


def _check_cluster(config: RunConfig, path: str | None) -> None:
    """The ``[cluster]`` rules: remote rewards among the reward functions, shards and remote
    rewards only on Ray, and Ray installed when the run uses it."""
    cluster = config.cluster
    for name in cluster.remote_rewards:
        if name not in config.reward.functions:
            raise ConfigError(
                f"remote reward {name!r} is not one of reward.functions "
                f"{list(config.reward.functions)}",
                path=path,
                key="cluster.remote_rewards",
            )
    if cluster.backend == "local":
        if cluster.shards or cluster.remote_rewards:
            key = "cluster.shards" if cluster.shards else "cluster.remote_rewards"
            raise ConfigError('needs cluster.backend = "ray"', path=path, key=key)
        return
    require_ray(path)


def require_ray(path: str | None = None) -> None:
    """Raise one ConfigError naming ``pip install 'grpo-engine[ray]'`` unless Ray is
    importable (checked without importing it)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "cluster.backend = \"ray\" needs ray: pip install 'grpo-engine[ray]'",
            path=path,
            key="cluster.backend",
        )


def _check_report_to(names: Sequence[str], path: str | None) -> None:
    """Every name of ``report_to`` a known tracker, none twice."""
    for i, name in enumerate(names):
        if name not in TRACKERS:
            raise ConfigError(
                f"unknown tracker {name!r}; known trackers: {', '.join(TRACKERS)}",
                path=path,
                key="report_to",
            )
        if name in names[:i]:
            raise ConfigError(f"tracker {name!r} named twice", path=path, key="report_to")


def _check_hf_server(config: RunConfig, path: str | None) -> None:
    """``hf.generation = "server"``: LoRA (the server hot-loads adapters), the completions
    mode and the model name of the base model in ``[endpoint]``."""
    if config.hf.full_finetune:
        raise ConfigError(
            "server generation hot-loads LoRA adapters: it cannot serve full fine-tuning",
            path=path,
            key="hf.generation",
        )
    if config.endpoint.mode != "completions":
        raise ConfigError(
            'server generation sends the rendered prompt: set endpoint.mode = "completions"',
            path=path,
            key="endpoint.mode",
        )
    if not config.endpoint.model.strip():
        raise ConfigError(
            "server generation needs the server's name of the base model (version 0)",
            path=path,
            key="endpoint.model",
        )


def _check_hf(config: RunConfig, path: str | None) -> None:
    """The ``[hf]`` rules: a model, target modules unless full fine-tuning, a template with
    ``{text}``, and torch installed when the run uses the section."""
    hf = config.hf
    if not hf.model.strip():
        raise ConfigError("hf.model is empty", path=path, key="hf.model")
    if not hf.full_finetune and not hf.target_modules:
        raise ConfigError(
            "LoRA needs target modules (or hf.full_finetune = true)",
            path=path,
            key="hf.target_modules",
        )
    if "{text}" not in hf.prompt_template:
        raise ConfigError("must contain {text}", path=path, key="hf.prompt_template")
    if config.policy == "hf" and hf.generation == "server":
        _check_hf_server(config, path)
    if config.policy == "hf":
        require_torch(path)


def require_torch(path: str | None = None) -> None:
    """Raise one ConfigError naming ``pip install 'grpo-engine[torch]'`` unless every module of
    :data:`TORCH_MODULES` is importable (checked without importing them)."""
    missing = [m for m in TORCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"policy 'hf' needs {', '.join(missing)}: pip install 'grpo-engine[torch]'",
            path=path,
            key="policy",
        )


def _plain(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(x) for x in value]
    return value


def _drop_none(table: Table) -> Table:
    return {
        k: _drop_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None
    }
