"""Ray, imported only when a run asks for it (``import engine`` never imports it)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..config.loading import require_ray

__all__ = ("ray_module",)


def ray_module() -> ModuleType:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed; names ``pip install 'grpo-engine[ray]'``.
    """
    require_ray()
    return importlib.import_module("ray")
