"""Resuming a run where it is: the run directory's ``config.json`` is the base, the directory
the output.

::

    plan = plan_resume("runs/a", overrides=["steps=300"])
    if plan.changes:  # keys that would change the run's trajectory
        ...  # refuse (``python -m engine run`` does, unless --force-resume)
    async with TrainingManager(plan.config) as trainer:
        await trainer.run(resume=plan.checkpoint)

The user's config file and overrides apply over the saved config; :func:`~engine.training.
checkpoints.config_changes` lists what they change beyond :data:`~engine.training.
checkpoints.RESUMABLE_KEYS`. As everywhere a saved config is read, its endpoint location,
key variable and reward imports are the user's to give (:mod:`engine.training.saved`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..config.loading import to_dict
from ..config.sections import RunConfig
from ..errors import CheckpointError
from ..learning.checkpoint import latest_checkpoint, load_checkpoint
from .checkpoints import config_changes
from .saved import resolve_saved_config

__all__ = ("ResumePlan", "plan_resume")


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """How a run resumes.

    Attributes:
        run_dir: the run's directory, which the resumed run writes.
        checkpoint: what to pass as ``TrainingManager.run(resume=...)``: the checkpoint
            named, or the run directory (its latest checkpoint).
        config: the saved config under the user's file and overrides, ``out`` the run dir.
        changes: ``(key, saved, new)`` of each change that alters the run's trajectory.
    """

    run_dir: Path
    checkpoint: Path
    config: RunConfig
    changes: tuple[tuple[str, Any, Any], ...]


def plan_resume(
    target: str | Path,
    *,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    trust_saved_config: bool = False,
    stream: TextIO | None = None,
) -> ResumePlan:
    """The plan to resume the run at ``target`` (a run directory, or a checkpoint in its
    ``checkpoints/``) under the user's config file ``path`` and ``overrides`` (blocking: reads
    files).

    Raises:
        CheckpointError: ``target`` is neither; its ``config.json`` is unreadable.
        ConfigError: an invalid config; saved authority the user did not give
            (:func:`~engine.training.saved.resolve_saved_config`).
    """
    run_dir, checkpoint = _locate(Path(target))
    source, saved = _saved_config(run_dir, checkpoint)
    out = orjson.dumps(str(run_dir)).decode()  # a TOML basic string
    resolved = resolve_saved_config(
        saved,
        source=source,
        path=path,
        overrides=[*overrides, f"out={out}"],
        trust=trust_saved_config,
        stream=stream,
    )
    changes = config_changes(to_dict(resolved.saved), to_dict(resolved.config))
    return ResumePlan(run_dir, checkpoint, resolved.config, tuple(changes))


def _locate(target: Path) -> tuple[Path, Path]:
    """``(run directory, checkpoint or run directory)`` of a resume target."""
    if (target / "config.json").is_file() or (target / "checkpoints").is_dir():
        return target, target
    if (target / "meta.json").is_file():
        if target.parent.name != "checkpoints":
            raise CheckpointError(
                f"{target}: a checkpoint outside a run directory: resume the run directory "
                "it belongs to"
            )
        return target.parent.parent, target
    raise CheckpointError(f"{target}: no checkpoint to resume from (not a run directory)")


def _saved_config(run_dir: Path, checkpoint: Path) -> tuple[str, Any]:
    """``(where, data)`` of the saved config: ``config.json``, else the checkpoint's."""
    path = run_dir / "config.json"
    if path.is_file():
        try:
            return str(path), orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None
    found = checkpoint if checkpoint != run_dir else latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from")
    _, meta = load_checkpoint(found)
    return str(found), meta.get("config")
