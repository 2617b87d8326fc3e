"""The built-in reward functions: cheap, deterministic, named in config.

Each is ``(example, output_text) -> float`` and compares the output with ``example.target``
(the dataset's ``output.generated`` or ``answer``) where it needs a reference; an example
without one is a recorded failure of that rollout (``ValueError``), never a silent 0.

=================  ==============================================================  ===========
name               value                                                           range
=================  ==============================================================  ===========
``exact_match``    first line of the output equals the target, both normalized     {0, 1}
``contains_answer`` the normalized target appears in the output as whole words     {0, 1}
``numeric_match``  the first number in the output equals the target's number      {0, 1}
``length_penalty`` 0 up to a word limit, falling linearly to -1 at twice the limit [-1, 0]
``non_empty``      the output has a non-space character                            {0, 1}
``unit_tests``     fraction of the example's ``tests`` its code passes (sandboxed) [0, 1]
=================  ==============================================================  ===========

``unit_tests`` (:mod:`engine.rewards.code`) is async: the code runs in the sandbox's
subprocess; the others are cheap enough to run inline.

Normalization (:func:`normalize`): lower case, Unicode NFKC, whitespace collapsed, and
punctuation stripped from both ends, so ``" Positive."`` matches ``positive``.

In config, ``[reward] functions = ["exact_match", "length_penalty"]`` names these (or any
``module:function``); :func:`resolve_reward_fn` looks a name up, and the assembly
(:func:`engine.training.assembly.build_rewarder`) turns the ``[reward]`` section into a
:class:`~engine.rewards.rewarder.Rewarder`.
"""

from __future__ import annotations

import importlib
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..types import Example
from .code import unit_tests

__all__ = (
    "REWARD_FUNCTIONS",
    "contains_answer",
    "exact_match",
    "length_penalty",
    "non_empty",
    "normalize",
    "numeric_match",
    "resolve_reward_fn",
    "unit_tests",
)

_PUNCT = " \t\n\r.,;:!?\"'`()[]{}<>*_-"
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def normalize(text: str) -> str:
    """Lower case, NFKC, collapsed whitespace, punctuation stripped from both ends."""
    t = unicodedata.normalize("NFKC", text).lower()
    return " ".join(t.split()).strip(_PUNCT)


def _target(example: Example, name: str) -> str:
    if example.target is None:
        raise ValueError(f"example {example.id} has no target for {name}")
    return example.target


def exact_match(example: Example, text: str) -> float:
    """1.0 when the output's first non-empty line equals the target, both normalized."""
    target = normalize(_target(example, "exact_match"))
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return float(bool(lines) and normalize(lines[0]) == target)


def contains_answer(example: Example, text: str) -> float:
    """1.0 when the normalized target occurs in the normalized output as whole words."""
    target = normalize(_target(example, "contains_answer"))
    if not target:
        raise ValueError(f"example {example.id} has an empty target")
    hay = normalize(text)
    return float(re.search(rf"(?<!\w){re.escape(target)}(?!\w)", hay) is not None)


def _first_number(text: str) -> float | None:
    m = _NUMBER_RE.search(text)
    return None if m is None else float(m.group(0).replace(",", ""))


def numeric_match(example: Example, text: str) -> float:
    """1.0 when the first number in the output equals the target's (relative tolerance 1e-6)."""
    want = _first_number(_target(example, "numeric_match"))
    if want is None:
        raise ValueError(f"example {example.id}: target {example.target!r} has no number")
    got = _first_number(text)
    return float(got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))


def length_penalty(example: Example, text: str) -> float:
    """0 up to a word limit, then linearly down to -1 at twice the limit.

    The limit is ``max_words`` from the example's line when given, else twice the target's
    word count (at least 8), else 64 words.
    """
    limit = example.meta.get("max_words") or example.inputs.get("max_words")
    if not limit:
        limit = max(8, 2 * len(example.target.split())) if example.target else 64
    words = len(text.split())
    return -min(1.0, max(0.0, (words - float(limit)) / float(limit)))


def non_empty(example: Example, text: str) -> float:
    """1.0 for an output with any non-space character (a cheap gate for judges)."""
    del example
    return float(bool(text.strip()))


REWARD_FUNCTIONS: Mapping[str, Callable[[Example, str], Any]] = MappingProxyType(
    {
        "exact_match": exact_match,
        "contains_answer": contains_answer,
        "numeric_match": numeric_match,
        "length_penalty": length_penalty,
        "non_empty": non_empty,
        "nonempty": non_empty,
        "unit_tests": unit_tests,
    }
)
"""The built-in reward functions by config name (``RewardConfig.functions``); all but the
async ``unit_tests`` are cheap enough to run inline."""


def resolve_reward_fn(
    name: str, registry: Mapping[str, Callable[..., Any]] | None = None
) -> Callable[..., Any]:
    """A reward function by name: ``registry``, then :data:`REWARD_FUNCTIONS`, then a
    ``module:function`` import path.

    Raises:
        ConfigError: unknown name, or the import path does not resolve to a callable.
    """
    if registry and name in registry:
        return registry[name]
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if ":" not in name:
        known = sorted({*REWARD_FUNCTIONS, *(registry or {})})
        raise ConfigError(
            f"unknown reward function {name!r}; known: {', '.join(known)}, or module:function",
            key="reward.functions",
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot import reward function {name!r}: {exc}", key="reward.functions"
        ) from None
    if not callable(obj):
        raise ConfigError(f"{name!r} is not callable", key="reward.functions")
    return obj
