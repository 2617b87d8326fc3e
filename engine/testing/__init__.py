"""Test helpers for users of the engine: the simulated OpenAI-compatible server.

The names are loaded lazily from :mod:`engine.testing.sim` on first use, so that
``python -m engine.testing.sim`` does not import the module twice (runpy warns about that).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sim import (
        FAULT_KINDS,
        GOOD_WORDS,
        JUDGE_MARKER,
        VOCAB,
        Faults,
        SimConfig,
        SimRequest,
        SimServer,
        SimStats,
        default_judge,
        default_model,
        sim_subprocess,
    )

__all__ = (
    "FAULT_KINDS",
    "GOOD_WORDS",
    "JUDGE_MARKER",
    "VOCAB",
    "Faults",
    "SimConfig",
    "SimRequest",
    "SimServer",
    "SimStats",
    "default_judge",
    "default_model",
    "sim_subprocess",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".sim", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
