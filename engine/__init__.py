"""grpo-engine: Group Relative Policy Optimization for language models, as an asyncio engine."""

from __future__ import annotations

from .config import RunConfig, load_config
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EndpointError,
    EngineError,
)

__version__ = "0.1.0"

__all__ = (
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EndpointError",
    "EngineError",
    "RunConfig",
    "__version__",
    "load_config",
)
