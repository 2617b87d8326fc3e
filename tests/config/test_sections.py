"""engine.config.sections: the config dataclasses are frozen and their defaults valid."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config.loading import load_config, to_dict
from engine.config.sections import RunConfig


def test_configs_are_frozen() -> None:
    """Config objects cannot be changed after loading."""
    config = load_config()
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.grpo.beta = 1.0  # type: ignore[misc]


def test_defaults_pass_validation() -> None:
    """The dataclass defaults are themselves a valid config."""
    assert load_config(None, base=to_dict(RunConfig())) == RunConfig()
