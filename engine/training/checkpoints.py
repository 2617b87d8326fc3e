"""A run's checkpoints: the learner's state, the run's progress and its config, in one
directory per step (:mod:`engine.learning.checkpoint` writes them atomically).

A checkpoint resumes a run only under the config it was written with: every key is compared
(:func:`config_changes`) except :data:`RESUMABLE_KEYS`, which do not change what the run
computes. Every draw of randomness is keyed by ``(seed, step, group)``, so no generator state
is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from ..config.loading import load_config, to_dict
from ..config.sections import RunConfig
from ..errors import CheckpointError, ConfigError
from ..files import ensure_dir
from ..learning import checkpoint as ckpt
from ..learning.learner import Learner
from ..telemetry.logs import get_logger
from .progress import RunProgress

__all__ = ("RESUMABLE_KEYS", "RunCheckpoints", "check_compatible", "config_changes")

_log = get_logger("engine.training.checkpoints")

RESUMABLE_KEYS = (
    "steps",
    "out",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "limits",
    "telemetry",
    *(f"{s}.{f}" for s in ("endpoint", "judge") for f in ("provider", "base_url", "api_key_env")),
)
"""Keys (or whole sections) a resumed run may change: more (or fewer) ``steps`` where the
learning-rate schedule is constant (a decaying one is a function of ``steps``), where outputs
go and how often checkpoints are kept, the client-side ``[limits]``, the live monitoring of
``[telemetry]``, and where the endpoint is (not which model it serves). Everything else
changes the run's trajectory."""


def _leaves(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(_leaves(value, dotted))
        else:
            out[dotted] = value
    return out


def _resumable(key: str, now: Mapping[str, Any]) -> bool:
    if key == "steps":  # a decaying schedule spreads its decay over the run's steps
        optim = now.get("optim", {})
        return optim.get("schedule", "constant") == "constant"
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` of every config key (leaf, dotted) that differs
    between two :func:`~engine.config.loading.to_dict` results, except those a resumed run
    may change (:data:`RESUMABLE_KEYS`); a key missing on one side has the value None."""
    a, b = _leaves(saved), _leaves(now)
    return [
        (key, a.get(key), b.get(key))
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key) and not _resumable(key, now)
    ]


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
        self.force = False  # resume under a changed config (only the policy kind must agree)
        self.data_digests: dict[str, str] = {}  # the dataset files' SHA-256, by config key
        self.position: Callable[[int], dict[str, Any]] | None = None
        """Continuous admission: the data position at a version, saved as ``admission``."""
        self.loaded_position: object = None
        """The ``admission`` entry of the checkpoint :meth:`load` read (None: none)."""

    async def save(self, path: str | Path, progress: RunProgress) -> Path:
        """Write the learner's state and ``progress`` to ``path`` atomically."""
        arrays, meta = self.learner.state()
        meta = {
            **meta,
            "step": self.learner.version,
            "config": to_dict(self.config),
            "trainer": progress.to_meta(),
            "data": dict(self.data_digests),
            "rng": {
                "kind": "counter",
                "seed": self.config.seed,
                "note": "every draw is keyed by (seed, step, group): no stream state",
            },
        }
        if self.position is not None:
            meta["admission"] = self.position(self.learner.version)
        return await anyio.to_thread.run_sync(ckpt.save_checkpoint, path, arrays, meta)

    async def load(self, path: str | Path) -> RunProgress:
        """Restore the learner from ``path``; the run progress it saved.

        Raises:
            CheckpointError: unreadable, or written with another config (the keys named;
                with ``force`` only another policy kind).
        """
        arrays, meta = await anyio.to_thread.run_sync(ckpt.load_checkpoint, path)
        saved = meta.get("config")
        if not isinstance(saved, Mapping):
            raise CheckpointError(f"{path}: checkpoint holds no config")
        try:
            saved = to_dict(load_config(None, base=saved))  # every key, defaults filled in
        except ConfigError as exc:
            raise CheckpointError(f"{path}: checkpoint config: {exc}") from None
        check_compatible(saved, to_dict(self.config), str(path), force=self.force)
        self._check_data(meta.get("data"), path)
        with ckpt.restoring(path):  # a malformed meta.json: one CheckpointError
            self.loaded_position = meta.get("admission")
            self.learner.load_state(arrays, meta)
            return RunProgress.from_meta(meta.get("trainer", {}))

    def _check_data(self, saved: Any, path: str | Path) -> None:
        """The dataset files are those the checkpoint was trained on (their SHA-256), unless
        ``force``; a checkpoint that kept no digests (an older one) is not checked."""
        if not isinstance(saved, Mapping) or self.force:
            return
        for key, digest in self.data_digests.items():
            was = saved.get(key)
            if isinstance(was, str) and was != digest:
                file = self.config.data.train if key == "data.train" else self.config.data.eval
                raise CheckpointError(
                    f"{path}: the file of {key} ({file}) changed since this checkpoint (SHA-256 "
                    f"{was[:12]}... then, {digest[:12]}... now), which changes the run's "
                    "trajectory; pass --force-resume to resume on the new data anyway"
                )

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


def check_compatible(
    saved: Mapping[str, Any], now: Mapping[str, Any], path: str, *, force: bool = False
) -> None:
    """Raise CheckpointError naming the keys whose saved value differs from this run's
    (:func:`config_changes`); with ``force``, only a change of policy kind is refused (the
    policy's own ``load_state`` refuses arrays of another shape)."""
    changes = config_changes(saved, now)
    if force:
        changes = [c for c in changes if c[0] == "policy"]
    if changes:
        shown = "; ".join(f"{k} = {a!r} there, {b!r} here" for k, a, b in changes[:4])
        more = f" (and {len(changes) - 4} more)" if len(changes) > 4 else ""
        raise CheckpointError(f"{path}: checkpoint was written with another config: {shown}{more}")
