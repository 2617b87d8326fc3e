"""Short real runs (``python -m engine run``, the embedded tinylm, offline) with trackers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from engine.telemetry.records import read_records

SECRET = "sk-trackers-test-secret-0123456789"
"""The value of the API key variable the test runs name: it must reach no tracker."""

SMALL = (
    "--set",
    "data.batch_size=4",
    "--set",
    "grpo.group_size=4",
    "--set",
    "data.num_examples=200",
    "--set",
    "trainer.eval_size=8",
    "--set",
    "trainer.eval_every=2",
    "--set",
    "trainer.checkpoint_every=1",
    "--set",
    "endpoint.api_key_env=TRACKERS_TEST_KEY",
    "--set",
    "tracking.close_timeout=600",  # a loaded machine can take long to import and open them
    "--quiet",
)


def run_engine(
    out: Path,
    trackers: list[str],
    *args: str,
    steps: int = 3,
    resume: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m engine run`` for ``steps`` steps into ``out`` with ``report_to=trackers``."""
    names = ", ".join(f'"{n}"' for n in trackers)
    cmd = [sys.executable, "-m", "engine", "run", "--out", str(out), "--steps", str(steps)]
    cmd += [*SMALL, "--set", f"report_to=[{names}]", *args]
    if resume:
        cmd += ["--resume", str(out)]
    full_env = {**os.environ, "TRACKERS_TEST_KEY": SECRET, "WANDB_SILENT": "true", **(env or {})}
    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "TRACKIO_DIR"):
        if env is None or var not in env:
            full_env.pop(var, None)
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


def metrics(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one dict per step."""
    return list(read_records(out / "metrics.jsonl"))


def numbers(line: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a tracker gets from one line: the finite numbers but ``step``."""
    return {
        k: float(v)
        for k, v in line.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def tracker_state(out: Path) -> dict[str, Any]:
    """trackers.json."""
    return orjson.loads((out / "trackers.json").read_bytes())


def no_secret_in(directory: Path) -> None:
    """No file under ``directory`` holds :data:`SECRET`."""
    for path in directory.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
