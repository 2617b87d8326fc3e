"""What every experiment tracker implements, and the numbers it is given.

A :class:`Tracker` wraps one tracker's own library. Its methods are blocking and are only
ever called from the tracker's own worker thread (:mod:`~engine.telemetry.trackers.worker`),
in order: :meth:`Tracker.open` once, then any of the ``log_*`` methods, then
:meth:`Tracker.close` once. A method that raises is counted and warned about once; it never
reaches the training loop.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = (
    "Tracker",
    "TrackerRun",
    "TrackerSpec",
    "flat_config",
    "missing_modules",
    "numeric_metrics",
)


@dataclass(frozen=True, slots=True)
class TrackerSpec:
    """A tracker's name, the modules it imports and the extra that installs them."""

    name: str
    modules: tuple[str, ...]
    extra: str


@dataclass(frozen=True, slots=True)
class TrackerRun:
    """What a tracker needs to open (or reopen) its run.

    Attributes:
        project: W&B / trackio project, MLflow experiment.
        run_name: the tracker run's display name.
        location: the tracker's directory or URI (already resolved to a default).
        config: the run config as plain data (no secret: the config holds only the *names*
            of the API key variables).
        resume_id: the id this tracker gave the run before (``trackers.json``), to continue;
            None opens a new run.
        start_step: the first step this process logs (a resumed run's checkpoint step).
        options: tracker-specific settings (``wandb_mode``, ``wandb_entity``).
    """

    project: str
    run_name: str
    location: str
    config: Mapping[str, Any]
    resume_id: str | None = None
    start_step: int = 0
    options: Mapping[str, str] = field(default_factory=dict)


class Tracker(Protocol):
    """One experiment tracker (see the module docstring)."""

    name: str

    def open(self, run: TrackerRun) -> str:
        """Start or resume the run; its id (kept in ``trackers.json`` for a resume)."""
        ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log one step's numeric metrics."""
        ...

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Log the run's summary (numbers as summary metrics, the rest as text/tags)."""
        ...

    def log_artifact(self, path: Path) -> None:
        """Attach a file or a directory to the run."""
        ...

    def close(self) -> None:
        """Flush and finish the run."""
        ...


def missing_modules(spec: TrackerSpec) -> list[str]:
    """The modules of ``spec`` that are not installed (found without importing them)."""
    return [m for m in spec.modules if importlib.util.find_spec(m) is None]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics line, nested tables flattened with ``/``.

    The same numbers as metrics.jsonl: its ``null`` (NaN, a metric a step lacks), text and
    booleans are left out, and so is ``step`` (the tracker's own step axis).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}/"))
        elif name != "step" and (x := _number(value)) is not None:
            out[name] = x
    return out


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as ``{"grpo.beta": "0.04", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = str(value)
    return out
