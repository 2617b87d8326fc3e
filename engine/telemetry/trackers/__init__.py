"""Experiment trackers: TensorBoard, MLflow, W&B and trackio, each through its own library.

``report_to = ["tensorboard", "mlflow", "wandb", "trackio"]`` in a run config sends every
step's metrics (the finite numbers of metrics.jsonl), the config, the summary and the run's
artifacts to each. Every tracker runs on its own thread behind a bounded queue, so one that
fails or hangs warns once and never stops or slows training.

- :mod:`~engine.telemetry.trackers.base`: the :class:`Tracker` protocol and its inputs;
- :mod:`~engine.telemetry.trackers.worker`: the thread and the drop-oldest queue;
- :mod:`~engine.telemetry.trackers.hub`: :class:`Trackers` (fan-out, warnings,
  ``trackers.json``) and :func:`require_trackers` (the missing extra, named);
- one module per tracker: ``tensorboard``, ``mlflow``, ``wandb``, ``trackio`` (each imports
  its library only when a run opens it, so ``import engine`` stays light).
"""

from __future__ import annotations

from .base import Tracker, TrackerRun, TrackerSpec, numeric_metrics
from .hub import SPECS, STATE_FILE, Trackers, read_state, require_trackers, tracker_class

__all__ = (
    "SPECS",
    "STATE_FILE",
    "Tracker",
    "TrackerRun",
    "TrackerSpec",
    "Trackers",
    "numeric_metrics",
    "read_state",
    "require_trackers",
    "tracker_class",
)
