"""W&B offline: a real run's transaction log read back (wandb's own protobuf records)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from .support import metrics, no_secret_in, numbers, run_engine, tracker_state

pytest.importorskip("wandb")

from . import wandb_log


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _read(path: Path) -> dict[str, Any]:
    """The run, config, history rows, last summary values and artifacts of one log."""
    found: dict[str, Any] = {"history": [], "summary": {}, "artifacts": [], "exit": None}
    for rec in wandb_log.records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            found["run"] = rec.run
            found["config"] = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
        elif kind == "history":
            found["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            found["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            found["artifacts"].append(rec.artifact.name)
        elif kind == "exit":
            found["exit"] = rec.exit.exit_code
    return found


def _logs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_wandb_offline_run_has_every_step_config_summary_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_engine(out, ["wandb"], steps=3)
    assert proc.returncode == 0, proc.stderr
    (log,) = _logs(out)
    run_id = tracker_state(out)["wandb"]["run_id"]
    assert log.name == f"run-{run_id}.wandb"
    found = _read(log)
    assert found["run"].run_id == run_id
    assert found["run"].project == "grpo-engine" and found["run"].display_name == "run"
    assert found["config"]["grpo"]["group_size"] == 4
    assert found["config"]["endpoint"]["api_key_env"] == "TRACKERS_TEST_KEY"
    rows = {row["_step"]: row for row in found["history"]}
    lines = metrics(out)
    assert sorted(rows) == [m["step"] for m in lines] == [0, 1, 2]
    for line in lines:
        for key, value in numbers(line).items():
            assert math.isclose(rows[line["step"]][key], value, rel_tol=1e-9), key
    assert found["summary"]["summary/steps_done"] == 3
    assert found["summary"]["summary/stop_reason"] == "steps"
    assert "report.html" in found["artifacts"]
    assert found["exit"] == 0
    no_secret_in(out)


def test_wandb_resume_continues_the_same_run_id(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_engine(out, ["wandb"], steps=2).returncode == 0
    first = tracker_state(out)["wandb"]["run_id"]
    proc = run_engine(out, ["wandb"], steps=4, resume=True)
    assert proc.returncode == 0, proc.stderr
    assert tracker_state(out)["wandb"]["run_id"] == first
    logs = _logs(out)
    assert len(logs) == 2 and all(p.name == f"run-{first}.wandb" for p in logs)
    runs = [_read(p) for p in logs]
    assert all(r["run"].run_id == first for r in runs)
    steps = sorted(row["_step"] for r in runs for row in r["history"])
    assert steps == [0, 1, 2, 3]
