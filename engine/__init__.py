"""grpo-engine: Group Relative Policy Optimization for language models, as an asyncio engine.

The public API. Names load lazily on first use, so ``import engine`` stays cheap and does not
import numpy (the CLI sets BLAS threading before numpy loads).

Example::

    import anyio, engine

    async def main():
        cfg = engine.load_config(None, ["steps=30"])
        async with engine.TrainingManager(cfg) as trainer:
            print(await trainer.run())

    anyio.run(main)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RetryConfig,
    RewardConfig,
    RunConfig,
    TinyLMConfig,
    TrainerConfig,
    load_config,
)
from .errors import (
    AuthenticationError,
    CheckpointError,
    ClientClosedError,
    ConfigError,
    DataError,
    DeadlineExceeded,
    EndpointError,
    EndpointTimeout,
    EngineError,
    OutputParseError,
    RateLimitError,
    RequestRejected,
    ResponseError,
    RewardError,
    ServerError,
    TransportError,
)

__version__ = "0.1.0"

# name -> module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "Adam": "optim",
    "Advantages": "advantages",
    "BatchMetrics": "trainer",
    "Client": "client",
    "Completion": "client",
    "ComparisonResult": "compare",
    "Example": "types",
    "FineTunedModel": "finetune",
    "GroupJudge": "judges",
    "LLMJudge": "judges",
    "Learner": "learner",
    "Limiter": "limits",
    "ModelComparator": "compare",
    "Policy": "policies.base",
    "PolicySnapshot": "policies.base",
    "PredictModule": "modules",
    "PromptPolicy": "policies.prompt",
    "RewardSpec": "rewards",
    "Rewarder": "rewards",
    "RunSummary": "trainer",
    "Signature": "modules",
    "TinyLM": "policies.tinylm",
    "TrainingManager": "trainer",
    "finetune": "finetune",
    "group_advantages": "advantages",
    "load_checkpoint": "checkpoint",
    "read_jsonl": "data",
    "save_checkpoint": "checkpoint",
    "tune_gc": "runtime",
}

__all__ = (
    "Adam",
    "Advantages",
    "AuthenticationError",
    "BatchMetrics",
    "CheckpointError",
    "Client",
    "ClientClosedError",
    "ComparisonResult",
    "Completion",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DeadlineExceeded",
    "EndpointConfig",
    "EndpointError",
    "EndpointTimeout",
    "EngineError",
    "Example",
    "FineTunedModel",
    "GRPOConfig",
    "GroupJudge",
    "LLMJudge",
    "Learner",
    "Limiter",
    "LimitsConfig",
    "ModelComparator",
    "OptimConfig",
    "OutputParseError",
    "Policy",
    "PolicySnapshot",
    "PredictModule",
    "PromptPolicy",
    "PromptPolicyConfig",
    "RateLimitError",
    "RequestRejected",
    "ResponseError",
    "RetryConfig",
    "RewardConfig",
    "RewardError",
    "RewardSpec",
    "Rewarder",
    "RunConfig",
    "RunSummary",
    "ServerError",
    "Signature",
    "TinyLM",
    "TinyLMConfig",
    "TrainerConfig",
    "TrainingManager",
    "TransportError",
    "__version__",
    "finetune",
    "group_advantages",
    "load_checkpoint",
    "load_config",
    "read_jsonl",
    "save_checkpoint",
    "tune_gc",
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from .advantages import Advantages, group_advantages
    from .checkpoint import load_checkpoint, save_checkpoint
    from .client import Client, Completion
    from .compare import ComparisonResult, ModelComparator
    from .data import read_jsonl
    from .finetune import FineTunedModel, finetune
    from .judges import GroupJudge, LLMJudge
    from .learner import Learner
    from .limits import Limiter
    from .modules import PredictModule, Signature
    from .optim import Adam
    from .policies.base import Policy, PolicySnapshot
    from .policies.prompt import PromptPolicy
    from .policies.tinylm import TinyLM
    from .rewards import Rewarder, RewardSpec
    from .trainer import BatchMetrics, RunSummary, TrainingManager
    from .types import Example
