"""Data stage: small built-in JSONL datasets shipped with the package.

``sentiment``: 100 one-sentence reviews (50 positive, 50 negative) in the training-example
format, ``{"input": {"text": ...}, "output": {"generated": "positive"}}``.
Gemma 3 270M (a base model) answers ``positive``/``negative`` almost never zero-shot and most
of the time with a few balanced demonstrations: a task where the prompt, not the weights,
decides the score (the prompt policy's llama.cpp example and integration test).

``calculator``: 48 arithmetic word problems (``output.generated`` is the number), the data of
the calculator-tool environment (:mod:`engine.environments.calculator`).

Example::

    from engine.data import datasets
    examples = datasets.load("sentiment")            # list[Example]
    path = datasets.path("sentiment")                # for config files: data.train = "..."
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...errors import DataError
from ...types import Example
from ..jsonl import read_jsonl

__all__ = ("load", "names", "path")


def names() -> list[str]:
    """Names of the built-in datasets."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def path(name: str) -> Path:
    """Filesystem path of built-in dataset ``name``; DataError if there is none."""
    p = Path(str(resources.files(__name__).joinpath(f"{name}.jsonl")))
    if not p.is_file():
        raise DataError(f"no built-in dataset {name!r}; known: {', '.join(names())}")
    return p


def load(name: str) -> list[Example]:
    """All examples of built-in dataset ``name``."""
    return list(read_jsonl(path(name)))
