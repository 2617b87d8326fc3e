"""grpo-engine: Group Relative Policy Optimization for language models, as an asyncio engine.

The public API. Names load lazily on first use, so ``import engine`` stays cheap and does not
import numpy (the CLI sets BLAS threading before numpy loads).

Example::

    import anyio, engine

    async def main():
        config = engine.load_config(None, ["steps=30"])
        async with engine.TrainingManager(config) as trainer:
            print(await trainer.run())

    anyio.run(main)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config.loading import load_config
from .config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    HFConfig,
    LimitsConfig,
    OptimConfig,
    PromptPolicyConfig,
    RetryConfig,
    RewardConfig,
    RunConfig,
    TelemetryConfig,
    TinyLMConfig,
    TrainerConfig,
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
    RunDirError,
    ServerError,
    TransportError,
)

__version__ = "0.1.0"

# name -> module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "Adam": "policies.optim",
    "Advantages": "learning.advantages",
    "BatchMetrics": "training.trainer",
    "Client": "endpoints.client",
    "ClusterTrainingManager": "cluster.training",
    "Completion": "endpoints.parsing",
    "ComparisonResult": "evaluation.compare",
    "Example": "types",
    "FineTunedModel": "training.finetune",
    "GroupJudge": "rewards.judges",
    "HFFineTunedModel": "training.finetune",
    "LLMJudge": "rewards.judges",
    "Learner": "learning.learner",
    "Limiter": "endpoints.limits",
    "ModelComparator": "evaluation.compare",
    "Policy": "policies.base",
    "PolicySnapshot": "policies.base",
    "PredictModule": "endpoints.modules",
    "PromptPolicy": "policies.prompt",
    "RewardSpec": "rewards.rewarder",
    "Rewarder": "rewards.rewarder",
    "RunSummary": "training.trainer",
    "Signature": "endpoints.signatures",
    "TinyLM": "policies.tinylm",
    "TrainingManager": "training.trainer",
    "finetune": "training.finetune",
    "group_advantages": "learning.advantages",
    "load_checkpoint": "learning.checkpoint",
    "read_jsonl": "data.jsonl",
    "save_checkpoint": "learning.checkpoint",
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
    "ClusterTrainingManager",
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
    "HFConfig",
    "HFFineTunedModel",
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
    "RunDirError",
    "RunSummary",
    "ServerError",
    "Signature",
    "TelemetryConfig",
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
    if module == "training.finetune":  # its cluster backend (Ray itself loads only if used)
        importlib.import_module(".cluster.training", __name__)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from .cluster.training import ClusterTrainingManager
    from .data.jsonl import read_jsonl
    from .endpoints.client import Client
    from .endpoints.limits import Limiter
    from .endpoints.modules import PredictModule
    from .endpoints.parsing import Completion
    from .endpoints.signatures import Signature
    from .evaluation.compare import ComparisonResult, ModelComparator
    from .learning.advantages import Advantages, group_advantages
    from .learning.checkpoint import load_checkpoint, save_checkpoint
    from .learning.learner import Learner
    from .policies.base import Policy, PolicySnapshot
    from .policies.optim import Adam
    from .policies.prompt import PromptPolicy
    from .policies.tinylm import TinyLM
    from .rewards.judges import GroupJudge, LLMJudge
    from .rewards.rewarder import Rewarder, RewardSpec
    from .training.finetune import FineTunedModel, HFFineTunedModel, finetune
    from .training.trainer import BatchMetrics, RunSummary, TrainingManager
    from .types import Example
