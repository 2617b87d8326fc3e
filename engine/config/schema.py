"""Former home of the whole config module; its names now live in sections, loading, reference."""

from __future__ import annotations

from .loading import load_config as load_config  # relayout: re-export
from .loading import to_dict as to_dict  # relayout: re-export
from .reference import config_reference as config_reference  # relayout: re-export
from .reference import field_docs as field_docs  # relayout: re-export
from .sections import DataConfig as DataConfig  # relayout: re-export
from .sections import EndpointConfig as EndpointConfig  # relayout: re-export
from .sections import GRPOConfig as GRPOConfig  # relayout: re-export
from .sections import LimitsConfig as LimitsConfig  # relayout: re-export
from .sections import OptimConfig as OptimConfig  # relayout: re-export
from .sections import PromptPolicyConfig as PromptPolicyConfig  # relayout: re-export
from .sections import RetryConfig as RetryConfig  # relayout: re-export
from .sections import RewardConfig as RewardConfig  # relayout: re-export
from .sections import RolloutConfig as RolloutConfig  # relayout: re-export
from .sections import RunConfig as RunConfig  # relayout: re-export
from .sections import TinyLMConfig as TinyLMConfig  # relayout: re-export
from .sections import TrainerConfig as TrainerConfig  # relayout: re-export
