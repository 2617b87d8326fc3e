"""Weights & Biases through ``wandb`` itself, offline by default.

``wandb.init`` with the run id this tracker made (``trackers.json``) and ``resume="allow"``,
its files under ``wandb_dir`` (default the run directory: ``<out>/wandb/``), no console
capture, no system metrics, no code or git saving. Offline, ``wandb sync <out>/wandb/
offline-run-*`` uploads it later; a resumed run writes a second offline directory of the same
run id, which W&B merges into that run. Metrics by ``run.log(..., step=step)``, the config as the
run's config, the summary into ``run.summary``, artifacts as one ``wandb.Artifact`` each.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import TrackerRun, TrackerSpec

__all__ = ("SPEC", "WandbTracker")

SPEC = TrackerSpec("wandb", ("wandb",), "wandb")


def _artifact_name(path: Path) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", path.name) or "artifact"


class WandbTracker:
    """See the module docstring; the run id is W&B's run id."""

    name = "wandb"

    def __init__(self) -> None:
        self._run: Any = None

    def open(self, run: TrackerRun) -> str:
        import wandb

        directory = Path(run.location)
        directory.mkdir(parents=True, exist_ok=True)
        run_id = run.resume_id or uuid.uuid4().hex[:12]
        settings = wandb.Settings(
            mode=run.options.get("wandb_mode", "offline"),
            console="off",
            silent=True,
            x_disable_stats=True,
            x_disable_meta=True,
            save_code=False,
            disable_git=True,
        )
        self._run = wandb.init(
            project=run.project,
            entity=run.options.get("wandb_entity") or None,
            name=run.run_name,
            id=run_id,
            resume="allow",
            dir=str(directory),
            config=dict(run.config),
            settings=settings,
            reinit="create_new",
        )
        return str(self._run.id)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self._run.summary.update({f"summary/{k}": v for k, v in summary.items()})

    def log_artifact(self, path: Path) -> None:
        import wandb

        art = wandb.Artifact(_artifact_name(path), type="run-output")
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self._run.log_artifact(art)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
