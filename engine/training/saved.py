"""Saved configs are data, not authority: what a checkpoint's config may decide, and what only
the user may.

A checkpoint's ``meta.json``, a saved model and a run directory's ``config.json`` carry the
config they were written with. Most of it is data a loader needs (the policy's shape, its
prompts, decoding settings). Some of it is authority, which only the user's own config, its
``--set`` overrides or the API's arguments decide:

- where requests go and with which key: ``provider``, ``base_url`` and ``api_key_env`` of
  ``[endpoint]`` and of ``[judge]``;
- which code is imported: ``reward.functions`` entries that are ``module:function`` paths.

:func:`resolve_saved_config` builds the config to run from a saved one and the user's layers.
A saved authority value that the run would use and that the user did not give is one
ConfigError naming what to pass, unless the user trusts the saved config explicitly
(``--trust-saved-config``, ``trust_saved_config=True``); what it then supplies is printed on
stderr before any request. Even trusted, the key that a saved ``api_key_env`` names is sent only
to the host saved beside it: when the user names another ``base_url``, that variable is not
used. Saved values the run does not use (an endpoint in a tinylm checkpoint) stay inert data.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..config.loading import given_keys, load_config
from ..config.sections import EndpointConfig, RunConfig
from ..endpoints.redaction import strip_url
from ..errors import CheckpointError, ConfigError
from .assembly import needs_endpoint

__all__ = ("AUTHORITY_FIELDS", "ResolvedConfig", "authority_in_use", "resolve_saved_config")

AUTHORITY_FIELDS = ("provider", "base_url", "api_key_env")
"""The fields of ``[endpoint]`` and ``[judge]`` that say where requests and keys go."""

_SECTIONS = ("endpoint", "judge")
_DEFAULTS = EndpointConfig()


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    """A config built on a saved one.

    Attributes:
        config: the config to run: the saved one under the user's layers, authority checked.
        saved: the saved config as it was kept (what ``config`` was built on), to compare
            against.
        adopted: ``key = value`` of each authority value taken from the saved config on trust.
    """

    config: RunConfig
    saved: RunConfig
    adopted: tuple[str, ...] = ()


def authority_in_use(config: RunConfig, *, client_given: bool = False) -> set[str]:
    """The sections whose authority a run of ``config`` uses: ``endpoint`` (it talks to an
    endpoint, unless the caller brings its own client), ``judge`` (a ``[judge]`` section that
    an LLM judge uses) and ``reward`` (its reward functions, which tinylm does not use)."""
    used = set()
    talks = needs_endpoint(config) and not client_given
    if talks:
        used.add("endpoint")
    if talks and config.judge is not None and config.reward.judge_prompt.strip():
        used.add("judge")
    if config.policy != "tinylm":
        used.add("reward")
    return used


def resolve_saved_config(
    saved: Mapping[str, Any],
    *,
    source: str,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    layer: Mapping[str, Mapping[str, Any]] | None = None,
    trust: bool = False,
    client_given: bool = False,
    trust_hint: str = "--trust-saved-config",
    user_hint: str = "--set",
    stream: TextIO | None = None,
) -> ResolvedConfig:
    """The config to run: ``saved`` (the data of ``source``), then ``layer`` (sections merged
    key by key), then the user's file ``path`` and ``overrides``, as :func:`load_config`
    applies them; authority as the module docstring says.

    Args:
        saved: the saved config data (a :func:`~engine.config.loading.to_dict` result).
        source: where it came from, for messages (a checkpoint or ``config.json`` path).
        path, overrides: the user's config file and ``KEY=VALUE`` overrides.
        layer: the API's sections over the saved ones (``{"endpoint": {...}}``); user-given.
        trust: use saved authority values the user did not give, printing them first.
        client_given: the caller brings its own client, so the saved endpoint sends nothing.
        trust_hint, user_hint: how this caller spells "trust" and "set a key", for messages.
        stream: where adopted values and notes are printed (default stderr).

    Raises:
        CheckpointError: the saved config is not a table.
        ConfigError: an invalid saved or user config; a saved authority value the run would
            use that the user did not give, without ``trust`` (naming what to pass).
    """
    out = stream if stream is not None else sys.stderr
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source}: the saved config is not a table")
    try:
        load_config(None, base=saved)
    except ConfigError as exc:
        raise ConfigError(f"{source}: saved config: {exc}") from None
    given = set(given_keys(path, overrides))
    given.update(f"{s}.{k}" for s, table in (layer or {}).items() for k in table)
    data = _layered(saved, layer)
    config = load_config(path, overrides, base=data)
    supplied = _supplied(saved, given)
    used = authority_in_use(config, client_given=client_given)
    withheld, adopted, notes = [], [], []
    for section in sorted({key.split(".")[0] for key in supplied} & used):
        keys = {k: v for k, v in supplied.items() if k.split(".")[0] == section}
        if trust:
            for key, value in keys.items():
                if key.endswith(".api_key_env") and _other_host(saved, config, section, given):
                    withheld.append(key)
                    notes.append(f"note: not using the saved {_named(keys, [key])} of {source}: "
                                 f"it goes with another host than {section}.base_url")  # fmt: skip
                else:
                    adopted.append(f"{key} = {_shown(key, value)}")
        elif section != "reward" and _locates(given, section):
            withheld += keys
            them = "them" if len(keys) > 1 else "it"
            notes.append(f"note: not using the saved {_named(keys, keys)} of {source} (give "
                         f"{them} yourself, or {trust_hint})")  # fmt: skip
        else:
            raise _refusal(section, keys, source, trust_hint, user_hint)
    if adopted:
        notes.append(f"using from the saved config of {source} ({trust_hint}): "
                     f"{'; '.join(adopted)}")  # fmt: skip
    for note in notes:
        print(note, file=out, flush=True)
    kept = _withhold(saved, withheld)
    if withheld:
        config = load_config(path, overrides, base=_layered(kept, layer))
    return ResolvedConfig(config, load_config(None, base=kept), tuple(adopted))


def _layered(saved: Mapping[str, Any], layer: Mapping[str, Mapping[str, Any]] | None) -> Any:
    data = copy.deepcopy(dict(saved))
    for section, table in (layer or {}).items():
        current = data.get(section)
        data[section] = {**(current if isinstance(current, Mapping) else {}), **table}
    return data


def _given(given: Iterable[str], key: str) -> bool:
    """Whether the user set ``key`` (or the section or table it is in)."""
    return any(g == key or key.startswith(g + ".") for g in given)


def _locates(given: set[str], section: str) -> bool:
    """Whether the user said where ``section``'s requests go (its provider or base URL)."""
    return _given(given, f"{section}.base_url") or _given(given, f"{section}.provider")


def _supplied(saved: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """The saved authority values the user did not give: ``{dotted key: saved value}``."""
    found: dict[str, Any] = {}
    for section in _SECTIONS:
        table = saved.get(section)
        if not isinstance(table, Mapping):
            continue
        for name in AUTHORITY_FIELDS:
            key = f"{section}.{name}"
            value = table.get(name)
            if value is not None and value != getattr(_DEFAULTS, name) and not _given(given, key):
                found[key] = value
    reward = saved.get("reward")
    functions = reward.get("functions", ()) if isinstance(reward, Mapping) else ()
    imports = [f for f in functions if isinstance(f, str) and ":" in f]
    if imports and not _given(given, "reward.functions"):
        found["reward.functions"] = list(functions)
    return found


def _other_host(saved: Mapping[str, Any], config: RunConfig, section: str, given: set[str]) -> bool:
    """Whether the user named a ``base_url`` for ``section`` other than the saved one."""
    if not _given(given, f"{section}.base_url"):
        return False
    table = saved.get(section)
    before = str(table.get("base_url", "")) if isinstance(table, Mapping) else ""
    endpoint = config.endpoint if section == "endpoint" else config.judge
    now = endpoint.base_url if endpoint is not None else ""
    return now.rstrip("/") != before.rstrip("/")


def _withhold(saved: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``saved`` with the authority ``keys`` back at their defaults."""
    data = copy.deepcopy(dict(saved))
    for key in keys:
        section, name = key.split(".")
        data[section][name] = getattr(_DEFAULTS, name)
    return data


def _named(values: Mapping[str, Any], keys: Iterable[str]) -> str:
    """``key 'value', ...`` of ``keys``."""
    return ", ".join(f"{k} {_shown(k, values[k])}" for k in keys)


def _shown(key: str, value: Any) -> str:
    return repr(strip_url(value)) if key.endswith(".base_url") else repr(value)


def _refusal(
    section: str, values: Mapping[str, Any], source: str, trust_hint: str, user_hint: str
) -> ConfigError:
    """The error for saved authority the run would use that the user did not give."""
    named = _named(values, values)
    if section == "reward":
        return ConfigError(
            f"{source} names reward functions to import ({named}); a saved config does not "
            f"decide what code runs: give reward.functions yourself ({user_hint} "
            f"reward.functions=[...]) or pass {trust_hint} to import them"
        )
    return ConfigError(
        f"{source} names {named}; a saved config does not decide where requests and keys "
        f"go: give the endpoint yourself ({user_hint} {section}.base_url=URL, and "
        f"{section}.api_key_env=VAR where it needs a key) or pass {trust_hint} to use the "
        "saved one"
    )
