"""trackio in local mode: its SQLite database under ``trackio_dir`` (default
``<out>/trackio``), read back by ``trackio.SQLiteStorage`` or shown by ``trackio show``.

trackio fixes its directory when first imported (``TRACKIO_DIR``), so this tracker sets
``TRACKIO_DIR`` before that import: one trackio directory per process. ``trackio.init`` with
the run name and ``resume="allow"`` (a resumed run continues the same name), ``trackio.log``
per step, the summary logged as ``summary/*`` numbers at the last step, artifacts through
``trackio.log_artifact``. trackio's own messages go to stderr, not stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import TrackerRun, TrackerSpec, numeric_metrics

__all__ = ("SPEC", "TrackioTracker")

SPEC = TrackerSpec("trackio", ("trackio",), "trackio")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """trackio prints its progress to stdout: keep the command's stdout clean."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _import_trackio(directory: Path) -> Any:
    """trackio imported with ``TRACKIO_DIR`` = ``directory``; a ``RuntimeError`` when this
    process imported it before with another directory."""
    if "trackio" not in sys.modules:
        os.environ["TRACKIO_DIR"] = str(directory)
    import trackio
    import trackio.utils

    if Path(trackio.utils.TRACKIO_DIR).resolve() != directory.resolve():
        raise RuntimeError(
            f"trackio already writes to {trackio.utils.TRACKIO_DIR} in this process, "
            f"not {directory}"
        )
    return trackio


class TrackioTracker:
    """See the module docstring; the run id is the trackio run name."""

    name = "trackio"

    def __init__(self) -> None:
        self._run: Any = None
        self._step = 0

    def open(self, run: TrackerRun) -> str:
        directory = Path(run.location)
        directory.mkdir(parents=True, exist_ok=True)
        trackio = _import_trackio(directory)
        name = run.resume_id or run.run_name
        with _quiet():
            self._run = trackio.init(
                project=run.project,
                name=name,
                config=dict(run.config),
                resume="allow",
                embed=False,
                auto_log_gpu=False,
                auto_log_cpu=False,
            )
        self._step = run.start_step
        return name

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)
        self._step = step

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        numbers = {f"summary/{k}": v for k, v in numeric_metrics(summary).items()}
        self._run.log(numbers, step=self._step)

    def log_artifact(self, path: Path) -> None:
        with _quiet():
            self._run.log_artifact(str(path), name=path.name.replace(".", "-"))

    def close(self) -> None:
        if self._run is not None:
            with _quiet():
                self._run.finish()
