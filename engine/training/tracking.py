"""A run's experiment trackers (``report_to``), built from its config and output directory.

The :class:`RunTrackers` of a run check, before any training step, that every named
tracker's library is installed (one ConfigError naming the extra otherwise), and resolve each
tracker's location:

- tensorboard: ``tracking.tensorboard_dir`` or ``<out>/tensorboard``;
- mlflow: ``tracking.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///<out>/mlflow.db`` (its artifacts in ``<out>/mlartifacts``);
- wandb: ``tracking.wandb_dir`` or ``<out>`` (W&B writes ``wandb/`` there);
- trackio: ``tracking.trackio_dir`` or ``<out>/trackio``.

A resumed run reads ``<out>/trackers.json`` and reopens the same tracker runs.
:func:`run_artifacts` names the files a finished run attaches: ``report.html`` (the CLI writes
it), the prompt policy's served prompt and the hf policy's adapter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..config.loading import to_dict
from ..config.sections import RunConfig
from ..errors import CheckpointError, EngineError
from ..telemetry.trackers import (
    STATE_FILE,
    TrackerRun,
    Trackers,
    read_state,
    require_trackers,
    tracker_class,
)

__all__ = ("RunTrackers", "run_artifacts")


def _location(name: str, config: RunConfig, out: Path) -> str:
    t = config.tracking
    if name == "tensorboard":
        return t.tensorboard_dir or str(out / "tensorboard")
    if name == "mlflow":
        uri = t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        return uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    if name == "wandb":
        return t.wandb_dir or str(out)
    return t.trackio_dir or str(out / "trackio")


class RunTrackers:
    """The trackers of ``config.report_to`` for the run in ``out`` (none without ``out``).

    Made with the trainer, so a missing library is an error before any step; the tracker
    runs are made by :meth:`start` (a resume reopens those of ``trackers.json``). The ``log_*``
    methods only queue, safe on the event loop; :meth:`start`, :meth:`finish` and
    :meth:`close` block (run them in a worker thread).

    Raises:
        ConfigError: a tracker's library is not installed (the extra to install named).
    """

    def __init__(self, config: RunConfig, out: Path | None) -> None:
        require_trackers(config.report_to)
        self._config = config
        self._out = out if config.report_to else None
        self.hub = Trackers()

    def __bool__(self) -> bool:
        return self._out is not None

    def start(self, start: int, resume: bool) -> None:
        """Start each tracker's thread on its run (blocking: reads trackers.json)."""
        out = self._out
        if out is None:
            return
        config, t = self._config, self._config.tracking
        state = read_state(out / STATE_FILE) if resume else {}
        plain = to_dict(config)
        pairs = []
        for name in config.report_to:
            run = TrackerRun(
                project=t.project,
                run_name=t.run_name or out.resolve().name,
                location=_location(name, config, out),
                config=plain,
                resume_id=state.get(name, {}).get("run_id"),
                start_step=start,
                options={"wandb_mode": t.wandb_mode, "wandb_entity": t.wandb_entity},
            )
            pairs.append((tracker_class(name)(), run))
        self.hub = Trackers(
            pairs,
            queue_size=t.queue_size,
            close_timeout=t.close_timeout,
            state_path=out / STATE_FILE,
            state=state,
        )
        self.hub.start()

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Queue one step's metrics line."""
        self.hub.log_metrics(step, metrics)

    def log_artifact(self, path: str | Path) -> None:
        """Queue a file or directory to attach."""
        self.hub.log_artifact(path)

    def finish(self, policy: Any, summary: Mapping[str, Any]) -> None:
        """Queue the summary and the run's artifacts (:func:`run_artifacts`); blocking."""
        if self._out is None:
            return
        self.hub.log_summary(summary)
        try:
            paths = run_artifacts(policy, self._out)
        except (OSError, EngineError) as exc:  # the run is done: a missing artifact is noted
            print(f"warning: run artifacts not written for the trackers: {exc}", file=sys.stderr)
            paths = []
        for path in paths:
            self.hub.log_artifact(path)

    def close(self) -> None:
        """Flush and close every tracker (``tracking.close_timeout`` at most); blocking."""
        self.hub.close()


def run_artifacts(policy: Any, out: Path) -> list[Path]:
    """The files a finished run attaches to its trackers (blocking: writes them first).

    The prompt policy's served candidate (its best on the held-out examples, else its most
    probable) goes to ``<out>/served_prompt.json``; the hf
    policy's LoRA adapter to ``<out>/adapter/`` (PEFT format). ``report.html`` is added by
    the CLI, which writes it.
    """
    found: list[Path] = []
    best = getattr(policy, "served", None) or getattr(policy, "best", None)
    if callable(best):
        candidate = best()
        data = candidate.to_json()
        choice_of = getattr(policy, "served_choice", None)
        choice = choice_of() if callable(choice_of) else None
        if choice is not None:  # its held-out score, interval and whether it was a coin flip
            data["selection"] = choice.to_json()
        report_of = getattr(policy, "served_report", None)
        if callable(report_of):  # which was served and why
            data["served"] = report_of()
        path = out / "served_prompt.json"
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        found.append(path)
    save_adapter = getattr(policy, "save_adapter", None)
    if callable(save_adapter):
        try:
            save_adapter(out / "adapter")
            found.append(out / "adapter")
        except CheckpointError:  # full fine-tuning: no adapter (the checkpoint has the model)
            pass
    return found
