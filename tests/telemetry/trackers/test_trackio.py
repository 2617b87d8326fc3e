"""trackio local mode: a real run's database read back through ``trackio.SQLiteStorage``.

trackio fixes its directory when first imported, so each read runs in its own interpreter
with ``TRACKIO_DIR`` set to the run's ``trackio/`` directory.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import metrics, no_secret_in, numbers, run_engine, tracker_state

pytest.importorskip("trackio")

_READ = """
import json, sys
from trackio import SQLiteStorage
project, run = sys.argv[1], sys.argv[2]
print(json.dumps({
    "runs": SQLiteStorage.get_runs(project),
    "logs": SQLiteStorage.get_logs(project, run),
    "config": SQLiteStorage.get_run_config(project, run),
    "artifacts": SQLiteStorage.get_run_artifacts(project, run, None),
}, default=str))
"""


def _read(out: Path, run: str) -> dict[str, Any]:
    env = {**os.environ, "TRACKIO_DIR": str(out / "trackio")}
    proc = subprocess.run(
        [sys.executable, "-c", _READ, "grpo-engine", run],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trackio_gets_every_step_config_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_engine(out, ["trackio"], steps=3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # trackio's messages are kept off stdout
    assert tracker_state(out)["trackio"]["run_id"] == "run"
    found = _read(out, "run")
    assert found["runs"] == ["run"]
    steps = {row["step"]: row for row in found["logs"] if "reward" in row}
    lines = metrics(out)
    assert sorted(steps) == [m["step"] for m in lines] == [0, 1, 2]
    for line in lines:
        for key, value in numbers(line).items():
            assert math.isclose(steps[line["step"]][key], value, rel_tol=1e-9), key
    summary = [row for row in found["logs"] if "summary/steps_done" in row]
    assert summary and summary[-1]["summary/steps_done"] == 3
    assert found["config"]["grpo"]["group_size"] == 4
    assert found["config"]["endpoint"]["api_key_env"] == "TRACKERS_TEST_KEY"
    assert "report-html" in json.dumps(found["artifacts"]), found["artifacts"]
    no_secret_in(out)


def test_trackio_resume_continues_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_engine(out, ["trackio"], steps=2).returncode == 0
    proc = run_engine(out, ["trackio"], steps=4, resume=True)
    assert proc.returncode == 0, proc.stderr
    assert tracker_state(out)["trackio"]["run_id"] == "run"
    found = _read(out, "run")
    assert found["runs"] == ["run"]
    assert sorted(row["step"] for row in found["logs"] if "reward" in row) == [0, 1, 2, 3]
