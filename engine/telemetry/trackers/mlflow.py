"""MLflow through ``mlflow.tracking.MlflowClient`` (no global active run).

The run is created in the experiment ``project`` (created when missing, its artifacts in
``<out>/mlartifacts`` for a local store). Metrics go by ``log_batch`` at each step, the config as
flat params (``grpo.beta``: MLflow params are strings, at most 6000 characters each) plus the
whole of it as the ``config.json`` artifact, the summary as ``summary.*`` metrics and tags and
as ``summary.json``, artifacts with ``log_artifact`` / ``log_artifacts``. Resuming reopens the
run id in ``trackers.json`` and marks it running again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import TrackerRun, TrackerSpec, flat_config, numeric_metrics

__all__ = ("SPEC", "MLflowTracker")

SPEC = TrackerSpec("mlflow", ("mlflow",), "mlflow")

_BATCH = 900
"""Metrics per ``log_batch`` call (MLflow accepts at most 1000)."""
_PARAM_CHARS = 6000


def _artifact_location(uri: str) -> str | None:
    """``<dir of the db>/mlartifacts`` for a local sqlite store, else the server's default."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return (Path(uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()
    return None


class MLflowTracker:
    """See the module docstring; the run id is MLflow's."""

    name = "mlflow"

    def __init__(self) -> None:
        self._client: Any = None
        self._run_id = ""

    def open(self, run: TrackerRun) -> str:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=run.location)
        self._client = client
        if run.resume_id is not None:
            self._run_id = client.get_run(run.resume_id).info.run_id
            client.update_run(self._run_id, status="RUNNING")
            return self._run_id
        exp = client.get_experiment_by_name(run.project)
        if exp is None:
            exp_id = client.create_experiment(
                run.project, artifact_location=_artifact_location(run.location)
            )
        else:
            exp_id = exp.experiment_id
        created = client.create_run(exp_id, run_name=run.run_name, tags={"engine": "grpo-engine"})
        self._run_id = created.info.run_id
        self._log_config(run.config)
        return self._run_id

    def _log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:_PARAM_CHARS]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 90):  # MLflow: at most 100 params per batch
            self._client.log_batch(self._run_id, params=params[i : i + 90])
        self._client.log_dict(self._run_id, dict(config), "config.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), _BATCH):
            self._client.log_batch(self._run_id, metrics=batch[i : i + _BATCH])

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        numbers = [Metric(f"summary.{k}", v, now, 0) for k, v in numeric_metrics(summary).items()]
        tags = [
            RunTag(f"summary.{k}", str(v)[:_PARAM_CHARS])
            for k, v in summary.items()
            if isinstance(v, str)
        ]
        self._client.log_batch(self._run_id, metrics=numbers[:_BATCH], tags=tags[:90])
        self._client.log_dict(self._run_id, dict(summary), "summary.json")

    def log_artifact(self, path: Path) -> None:
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path=path.name)
        else:
            self._client.log_artifact(self._run_id, str(path))

    def close(self) -> None:
        if self._client is not None and self._run_id:
            self._client.set_terminated(self._run_id)
