"""Test helpers for users of the engine: the simulated OpenAI-compatible server
(:mod:`engine.testing.sim`) and prompt-injection cases for judges
(:mod:`engine.testing.adversarial`).
"""

from __future__ import annotations

from .sim import (
    FAULT_KINDS,
    GOOD_WORDS,
    JUDGE_MARKER,
    VOCAB,
    Faults,
    SimConfig,
    SimRequest,
    SimServer,
    SimStatistics,
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
    "SimStatistics",
    "default_judge",
    "default_model",
    "sim_subprocess",
)
