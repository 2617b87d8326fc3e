"""TensorBoard through tensorboardX's ``SummaryWriter`` (no TensorFlow, no torch).

Scalars under their metric names at each step, the config as a JSON text (``config``), the
summary as text and as ``summary/*`` scalars at the last step, artifacts as text entries
naming them (TensorBoard has no files). Resuming opens the same log directory with
``purge_step`` = the checkpoint's step, so the events of the steps the run redoes are dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import TrackerRun, TrackerSpec, numeric_metrics

__all__ = ("SPEC", "TensorBoardTracker")

SPEC = TrackerSpec("tensorboard", ("tensorboardX",), "tensorboard")


def _code(text: str) -> str:
    """Markdown code block: TensorBoard renders text entries as Markdown."""
    return "```\n" + text + "\n```"


class TensorBoardTracker:
    """See the module docstring; the run id is the log directory."""

    name = "tensorboard"

    def __init__(self) -> None:
        self._writer: Any = None
        self._step = 0

    def open(self, run: TrackerRun) -> str:
        from tensorboardX import SummaryWriter

        logdir = Path(run.location)
        logdir.mkdir(parents=True, exist_ok=True)
        purge = run.start_step if run.resume_id is not None and run.start_step > 0 else None
        # tensorboardX names a file by the second and opens it "wb": the pid keeps two
        # writers of one second (a quick resume) from overwriting each other's file
        self._writer = SummaryWriter(
            str(logdir), purge_step=purge, flush_secs=10, filename_suffix=f".{os.getpid()}"
        )
        self._step = run.start_step
        text = json.dumps(dict(run.config), indent=2, sort_keys=True, default=str)
        self._writer.add_text("config", _code(text), global_step=run.start_step)
        return str(logdir)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._step = step

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for key, value in numeric_metrics(summary).items():
            self._writer.add_scalar(f"summary/{key}", value, global_step=self._step)
        text = json.dumps(dict(summary), indent=2, sort_keys=True, default=str)
        self._writer.add_text("summary", _code(text), global_step=self._step)

    def log_artifact(self, path: Path) -> None:
        self._writer.add_text("artifacts", f"`{path}`", global_step=self._step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
