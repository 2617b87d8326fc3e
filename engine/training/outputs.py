"""The files a run writes into its output directory.

::

    OUT/
      config.json      the run config
      metrics.jsonl    one line per step (a resumed run first drops the steps it will redo)
      events.jsonl     request, phase and log events (written by the event log)
      checkpoints/     step-N/ directories, the newest ``trainer.keep_checkpoints`` kept
      summary.json     what the run did

A run without an output directory (``out=None``) writes none of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..config.loading import to_dict
from ..config.sections import RunConfig
from ..files import atomic_write_bytes, check_writable, ensure_dir
from ..learning.checkpoint import list_checkpoints
from ..telemetry.events import MetricsLog
from ..telemetry.records import dumps
from ..telemetry.records import read_records as read_jsonl_records

__all__ = ("OUTPUT_FILES", "RunFiles")

OUTPUT_FILES: Mapping[str, str] = {
    "metrics": "metrics.jsonl",
    "events": "events.jsonl",
    "checkpoints": "checkpoints/",
    "config": "config.json",
}
"""The files of a run directory by role, as listed in ``summary.json``."""


class RunFiles:
    """The output directory of one run (see the module docstring).

    Attributes:
        out: the directory, or None to write nothing.
    """

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self._metrics: MetricsLog | None = None

    @property
    def checkpoints(self) -> Path | None:
        """The checkpoint directory, or None."""
        return None if self.out is None else self.out / "checkpoints"

    def prepare(self, config: RunConfig, start: int) -> None:
        """Create the directory, keep only the metrics and checkpoints of steps up to
        ``start`` (no duplicate steps after a crash; a run resumed from an older checkpoint
        leaves no later one behind to be picked up next), open metrics.jsonl and write
        config.json."""
        if self.out is None:
            return
        ensure_dir(self.out, follow=True)  # --out onto a file: one RunDirError
        for name in ("metrics.jsonl", "events.jsonl"):  # planted symlinks: refused up front
            check_writable(self.out / name)
        check_writable(self.out / "checkpoints", directory=True)
        for step, checkpoint in list_checkpoints(self.out / "checkpoints"):
            if step > start and checkpoint.is_symlink():
                checkpoint.unlink()  # never follow a planted link out of the run directory
            elif step > start:
                shutil.rmtree(checkpoint)
        path = self.out / "metrics.jsonl"
        if path.exists() or path.is_symlink():  # a symlink is refused by the reader
            rows = read_jsonl_records(path, int_keys=("step",))  # RunDirError names a bad line
            keep = [r for r in rows if r.get("step", -1) < start]
            atomic_write_bytes(path, b"".join(dumps(r) + b"\n" for r in keep))
        self._metrics = MetricsLog(path)
        atomic_write_bytes(
            self.out / "config.json", orjson.dumps(to_dict(config), option=orjson.OPT_INDENT_2)
        )

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Append one step's metrics line (fsynced)."""
        if self._metrics is not None:
            self._metrics.write(metrics)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write summary.json."""
        if self.out is None:
            return
        atomic_write_bytes(
            self.out / "summary.json",
            orjson.dumps(
                summary,
                option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                default=lambda o: None,
            ),
        )

    def close(self) -> None:
        """Close metrics.jsonl; idempotent."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
