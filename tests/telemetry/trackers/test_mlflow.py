"""MLflow: a real run's local store read back through ``MlflowClient``; an unreachable
tracking server warns once and does not stop the run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.telemetry.records import read_records

from .support import metrics, no_secret_in, numbers, run_engine, tracker_state

pytest.importorskip("mlflow")

pytestmark = pytest.mark.filterwarnings(
    # SQLAlchemy 2.1 deprecates a loader strategy MLflow's store still configures
    "ignore:The ``noload`` loader strategy:DeprecationWarning",
)


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")


def test_mlflow_gets_metrics_params_summary_and_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_engine(out, ["mlflow"], steps=3)
    assert proc.returncode == 0, proc.stderr
    client = _client(out)
    run_id = tracker_state(out)["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "grpo-engine"
    lines = metrics(out)
    for key in numbers(lines[0]):
        history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        for line in lines:
            if key in numbers(line):
                assert math.isclose(history[line["step"]], numbers(line)[key], rel_tol=1e-9)
    assert run.data.params["grpo.group_size"] == "4"
    assert run.data.params["endpoint.api_key_env"] == "TRACKERS_TEST_KEY"
    assert run.data.metrics["summary.steps_done"] == 3
    assert run.data.tags["summary.stop_reason"] == "steps"
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.json", "summary.json", "report.html"} <= names
    no_secret_in(out)


def test_mlflow_resume_continues_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_engine(out, ["mlflow"], steps=2).returncode == 0
    first = tracker_state(out)["mlflow"]["run_id"]
    proc = run_engine(out, ["mlflow"], steps=4, resume=True)
    assert proc.returncode == 0, proc.stderr
    assert tracker_state(out)["mlflow"]["run_id"] == first
    client = _client(out)
    steps = sorted(m.step for m in client.get_metric_history(first, "reward"))
    assert steps == [0, 1, 2, 3]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1


def test_mlflow_server_down_warns_once_and_the_run_goes_on(tmp_path: Path) -> None:
    """A tracking URI nobody listens on: the run finishes every step, exit 0, one warning."""
    out = tmp_path / "run"
    proc = run_engine(
        out,
        ["mlflow", "tensorboard"],
        "--set",
        'tracking.mlflow_tracking_uri="http://127.0.0.1:9"',
        steps=4,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
    )
    assert proc.returncode == 0, proc.stderr
    assert [m["step"] for m in metrics(out)] == [0, 1, 2, 3]
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: tracker mlflow")]
    assert len(warnings) == 1, proc.stderr
    assert "failed" in warnings[0] and "training goes on" in warnings[0]
    assert "mlflow" not in tracker_state(out) or "run_id" not in tracker_state(out)["mlflow"]
    logged = [r for r in read_records(out / "events.jsonl") if r.get("event") == "tracker.failed"]
    assert len(logged) == 1 and logged[0]["tracker"] == "mlflow"  # the structlog warning
    # the other tracker was unaffected
    assert tracker_state(out)["tensorboard"]["finished"] is True
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
