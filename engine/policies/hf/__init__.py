"""Open-weight transformers models trained in-process by token-level GRPO (``policy = "hf"``).

Importing this package imports no torch: :func:`build_hf_policy` checks that the
``grpo-engine[torch]`` extra is installed (one :class:`~engine.errors.ConfigError` saying what
to install when it is not) and only then imports :mod:`engine.policies.hf.policy`, the module
that imports torch, transformers and peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config.loading import require_torch
from ...config.sections import HFConfig

if TYPE_CHECKING:
    from .policy import HFPolicy

__all__ = ("build_hf_policy", "require_torch")


def build_hf_policy(hf: HFConfig, *, seed: int) -> HFPolicy:
    """The :class:`~engine.policies.hf.policy.HFPolicy` of ``hf``: the model loaded (a GGUF
    converted once and cached) and its LoRA adapter added.

    Raises:
        ConfigError: the extra is not installed, or the section names a model or modules
            that cannot be loaded (see :func:`engine.policies.hf.loading.load_model`).
    """
    require_torch()
    from .policy import HFPolicy  # torch is imported here, never by `import engine`

    return HFPolicy.from_config(hf, seed=seed)
