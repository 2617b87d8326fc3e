"""Configuration: frozen dataclasses loaded from TOML, with ``--set key=value`` overrides.

The first floor of the engine: every later stage reads its settings from here and from
nothing else.

- :mod:`~engine.config.sections`: ``RunConfig`` and its section dataclasses, a docstring per field;
- :mod:`~engine.config.loading`: :func:`load_config` (TOML, overrides, type and range checks)
  and :func:`to_dict`;
- :mod:`~engine.config.reference`: the Markdown config reference generated from the docstrings.
"""

from __future__ import annotations

from .loading import load_config, to_dict
from .reference import config_reference, field_docs
from .sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RetryConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TelemetryConfig,
    TinyLMConfig,
    TrackingConfig,
    TrainerConfig,
)

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
    "TelemetryConfig",
    "TinyLMConfig",
    "TrackingConfig",
    "TrainerConfig",
    "config_reference",
    "field_docs",
    "load_config",
    "to_dict",
)
