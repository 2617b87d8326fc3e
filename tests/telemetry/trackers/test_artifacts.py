"""The prompt policy's served prompt reaches the trackers as an artifact (simulated server)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import orjson
import pytest

from .support import SECRET, SMALL, no_secret_in, tracker_state

pytest.importorskip("mlflow")

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy:DeprecationWarning",
)


async def test_prompt_policy_run_attaches_its_served_prompt_and_report(tmp_path: Path) -> None:
    from engine.testing.sim import SimConfig, SimServer

    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    async with SimServer(SimConfig(latency=0.0)) as sim:
        config.write_text(
            f'policy = "prompt"\nreport_to = ["mlflow"]\n'
            f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
            '[prompt]\ninstructions = ["Answer briefly.", "Answer in detail."]\n'
            '[reward]\nfunctions = ["non_empty"]\n'
        )
        cmd = [sys.executable, "-m", "engine", "run", "--config", str(config)]
        cmd += ["--out", str(out), "--steps", "2", *SMALL]
        env = {**os.environ, "TRACKERS_TEST_KEY": SECRET}  # sent to the sim, never logged
        proc = await anyio.run_process(cmd, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    _check(out, tmp_path)


def _check(out: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    served = orjson.loads((out / "served_prompt.json").read_bytes())
    assert served["instruction"] in ("Answer briefly.", "Answer in detail.")
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    run_id = tracker_state(out)["mlflow"]["run_id"]
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"served_prompt.json", "report.html"} <= names
    local = client.download_artifacts(run_id, "served_prompt.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == served
    no_secret_in(out)
