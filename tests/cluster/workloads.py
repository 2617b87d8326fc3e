"""What the Ray tests run on the cluster: reward functions and shard parts.

Shipped to Ray's workers by value (``conftest.py`` registers this module with Ray's
cloudpickle), so a worker needs only the engine installed, not the tests folder.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from engine.config.sections import RunConfig
from engine.endpoints.limits import LimiterProtocol
from engine.policies.base import Policy
from engine.rewards.rewarder import Rewarder, RewardSpec
from engine.telemetry.events import EventLog
from engine.training.assembly import build_components
from engine.types import Example


def cpu_reward(example: Example, text: str) -> float:
    """About 20 ms of pure-Python work, then a value that depends on the text only."""
    end = time.process_time() + 0.02
    x = 0
    while time.process_time() < end:
        x += 1
    return float(len(text) % 3) / 2.0


def pid_reward(example: Example, text: str) -> float:
    """The worker's process id (to see where the reward ran)."""
    return float(os.getpid())


def failing_reward(example: Example, text: str) -> float:
    """Always fails, as a buggy reward function does."""
    raise ValueError(f"no verdict for {example.id}")


def slow_parts(config: RunConfig, limiter: LimiterProtocol | None, events: EventLog
               ) -> tuple[Policy, Rewarder, Any]:  # fmt: skip
    """The config's tinylm policy and task reward, the reward slowed to 0.3 s per group, so
    a shard has groups in flight long enough to be killed mid-run."""
    policy, rewarder, _ = build_components(config)
    assert rewarder is not None
    task = rewarder.specs[0]

    async def slow(example: Example, text: str) -> float:
        await asyncio.sleep(0.3)
        return float(task.fn(example, text))

    return policy, Rewarder([RewardSpec(task.name, slow)]), None
