"""The environments ``[environment] name`` can select: built-ins, or ``module:function``.

A built-in comes with its dataset (used when ``data.train`` is empty):

- ``calculator``: arithmetic word problems and a calculator tool
  (:mod:`engine.environments.calculator`, dataset ``calculator``).

Any other name is an import path ``module:function`` of a function (or class) that takes no
argument and returns an :class:`~engine.environments.base.Environment`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..data import datasets
from ..errors import ConfigError
from ..types import Example
from .base import Environment
from .calculator import CalculatorEnvironment

__all__ = ("BUILTIN_DATASETS", "BUILTIN_ENVIRONMENTS", "builtin_examples", "make_environment")

BUILTIN_ENVIRONMENTS: dict[str, Callable[[], Environment]] = {
    "calculator": CalculatorEnvironment,
}
"""Built-in environments by name."""

BUILTIN_DATASETS: dict[str, str] = {"calculator": "calculator"}
"""The built-in dataset (:mod:`engine.data.datasets`) of each built-in environment."""


def make_environment(name: str) -> Environment:
    """The environment called ``name`` (a built-in, or ``module:function``).

    Raises:
        ConfigError: an unknown name, an import path that does not resolve, or a factory
            that does not return an Environment.
    """
    factory: Any = BUILTIN_ENVIRONMENTS.get(name)
    if factory is None:
        if ":" not in name:
            known = ", ".join(sorted(BUILTIN_ENVIRONMENTS))
            raise ConfigError(
                f"unknown environment {name!r}; built-ins: {known}, or module:function",
                key="environment.name",
            )
        module_name, _, attr = name.partition(":")
        try:
            factory = importlib.import_module(module_name)
            for part in attr.split("."):
                factory = getattr(factory, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import environment {name!r}: {exc}", key="environment.name"
            ) from None
        if not callable(factory):
            raise ConfigError(f"{name!r} is not callable", key="environment.name")
    env = factory()
    if not isinstance(env, Environment):
        raise ConfigError(
            f"{name!r} returned {type(env).__name__}, not an Environment (name and start)",
            key="environment.name",
        )
    return env


def builtin_examples(name: str) -> list[Example] | None:
    """The built-in dataset of built-in environment ``name``; None for any other."""
    dataset = BUILTIN_DATASETS.get(name)
    return None if dataset is None else datasets.load(dataset)
