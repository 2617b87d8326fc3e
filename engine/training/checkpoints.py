"""A run's checkpoints: the learner's state, the run's progress and its config, in one
directory per step (:mod:`engine.learning.checkpoint` writes them atomically).

A checkpoint can resume a run only under a config that agrees on :data:`COMPATIBLE_KEYS`;
every draw of randomness is keyed by ``(seed, step, group)``, so no generator state is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from ..config.loading import to_dict
from ..config.sections import RunConfig
from ..errors import CheckpointError
from ..files import ensure_dir
from ..learning import checkpoint as ckpt
from ..learning.learner import Learner
from ..telemetry.logs import get_logger
from .progress import RunProgress

__all__ = ("COMPATIBLE_KEYS", "RunCheckpoints", "check_compatible")

_log = get_logger("engine.training.checkpoints")

COMPATIBLE_KEYS = ("policy", "seed", "tinylm", "grpo.group_size", "grpo.max_staleness")
"""Config keys a resumed run must share with its checkpoint."""


class RunCheckpoints:
    """Saves and restores the whole state of one run.

    Args:
        config: the run config (saved with each checkpoint, checked on load).
        learner: the learner, whose state (policy, optimizer, snapshots, version) is saved.
        directory: where :meth:`save_step` writes ``step-N``; None writes none.
    """

    def __init__(self, config: RunConfig, learner: Learner, directory: Path | None) -> None:
        self.config = config
        self.learner = learner
        self.directory = directory

    async def save(self, path: str | Path, progress: RunProgress) -> Path:
        """Write the learner's state and ``progress`` to ``path`` atomically."""
        arrays, meta = self.learner.state()
        meta = {
            **meta,
            "step": self.learner.version,
            "config": to_dict(self.config),
            "trainer": progress.to_meta(),
            "rng": {
                "kind": "counter",
                "seed": self.config.seed,
                "note": "every draw is keyed by (seed, step, group): no stream state",
            },
        }
        return await anyio.to_thread.run_sync(ckpt.save_checkpoint, path, arrays, meta)

    async def load(self, path: str | Path) -> RunProgress:
        """Restore the learner from ``path``; the run progress it saved.

        Raises:
            CheckpointError: unreadable, or written with an incompatible config (the key named).
        """
        arrays, meta = await anyio.to_thread.run_sync(ckpt.load_checkpoint, path)
        check_compatible(meta.get("config", {}), to_dict(self.config), str(path))
        with ckpt.restoring(path):  # a malformed meta.json: one CheckpointError
            self.learner.load_state(arrays, meta)
            return RunProgress.from_meta(meta.get("trainer", {}))

    async def save_step(self, progress: RunProgress) -> Path | None:
        """Save ``step-N`` for the learner's version N in the directory, then keep only the
        newest ``trainer.keep_checkpoints``; None without a directory."""
        if self.directory is None:
            return None
        await anyio.to_thread.run_sync(ensure_dir, self.directory)  # not a planted symlink
        path = await self.save(self.directory / f"step-{self.learner.version}", progress)
        _log.info("checkpoint.saved", step=self.learner.version, path=str(path))
        keep = self.config.trainer.keep_checkpoints
        await anyio.to_thread.run_sync(ckpt.prune_checkpoints, self.directory, keep)
        return path


def check_compatible(saved: Mapping[str, Any], now: Mapping[str, Any], path: str) -> None:
    """Raise CheckpointError naming the first of :data:`COMPATIBLE_KEYS` whose saved value
    differs from this run's."""
    for key in COMPATIBLE_KEYS:
        a: Any = saved
        b: Any = now
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b:
            raise CheckpointError(
                f"{path}: checkpoint was written with {key} = {a!r}, this run has {b!r}"
            )
