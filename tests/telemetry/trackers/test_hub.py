"""The trackers' plumbing with injected trackers (no tracker library needed): the queue never
blocks and drops the oldest, a failing tracker warns once, close is bounded, the numbers."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from engine.telemetry.trackers import TrackerRun, Trackers, numeric_metrics, read_state

_RUN = TrackerRun(project="p", run_name="r", location="", config={"a": 1})
_WAIT = 60.0  # generous: only reached when something is broken


class Recorder:
    """A tracker that records its calls; ``gate`` (when given) holds every log_metrics."""

    name = "recorder"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()
        self.steps: list[int] = []
        self.summary: dict[str, Any] = {}
        self.closed = threading.Event()

    def open(self, run: TrackerRun) -> str:
        return "rid-1"

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(_WAIT)
        self.steps.append(step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self.summary = dict(summary)

    def log_artifact(self, path: Path) -> None: ...

    def close(self) -> None:
        self.closed.set()


class FailsToOpen(Recorder):
    name = "broken"

    def open(self, run: TrackerRun) -> str:
        raise ConnectionRefusedError("tracking server at http://127.0.0.1:9 refused")


class FailsEveryCall(Recorder):
    name = "flaky"

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.steps.append(step)
        raise RuntimeError(f"step {step} rejected")


def test_a_hung_tracker_never_blocks_and_drops_the_oldest(tmp_path: Path) -> None:
    gate = threading.Event()
    slow = Recorder(gate)
    hub = Trackers([(slow, _RUN)], queue_size=3, state_path=tmp_path / "trackers.json")
    hub.start()
    hub.log_metrics(0, {"reward": 0.0})
    assert slow.entered.wait(_WAIT)  # the thread holds step 0 inside the tracker
    for step in range(1, 10):  # would hang here if submitting waited on the tracker
        hub.log_metrics(step, {"reward": float(step)})
    assert hub.workers[0].dropped == 6
    gate.set()
    hub.close()
    assert slow.steps == [0, 7, 8, 9]  # the in-flight one, then the newest three
    state = read_state(tmp_path / "trackers.json")
    assert state["recorder"] == {"run_id": "rid-1", "dropped": 6, "errors": 0, "finished": True}


def test_a_tracker_that_fails_to_open_warns_once_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = Recorder(), FailsToOpen()
    hub = Trackers([(bad, _RUN), (good, _RUN)], state_path=tmp_path / "trackers.json")
    hub.start()
    with structlog.testing.capture_logs() as logs:
        for step in range(5):
            hub.log_metrics(step, {"reward": 1.0})
        hub.log_summary({"steps_done": 5})
        hub.close()
    assert good.steps == [0, 1, 2, 3, 4] and good.summary == {"steps_done": 5}
    assert good.closed.is_set()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: tracker broken")]
    assert len(lines) == 1 and "ConnectionRefusedError" in lines[0], err
    failed = [r for r in logs if r["event"] == "tracker.failed"]
    assert len(failed) == 1 and failed[0]["tracker"] == "broken" and failed[0]["call"] == "open"
    assert failed[0]["log_level"] == "warning"
    state = orjson.loads((tmp_path / "trackers.json").read_bytes())
    assert "run_id" not in state["broken"] and state["recorder"]["run_id"] == "rid-1"


def test_a_tracker_whose_calls_fail_is_warned_once_and_still_called(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flaky = FailsEveryCall()
    hub = Trackers([(flaky, _RUN)])
    hub.start()
    for step in range(4):
        hub.log_metrics(step, {"reward": 1.0})
    hub.close()
    assert flaky.steps == [0, 1, 2, 3]
    assert hub.workers[0].errors == 4
    err = capsys.readouterr().err
    assert err.count("warning: tracker flaky failed (log_metrics: RuntimeError: step 0") == 1
    assert err.count("warning: tracker flaky") == 1


def test_close_leaves_a_hung_tracker_behind(capsys: pytest.CaptureFixture[str]) -> None:
    gate = threading.Event()
    hung = Recorder(gate)
    hub = Trackers([(hung, _RUN)], close_timeout=0.05)
    hub.start()
    hub.log_metrics(0, {"reward": 0.0})
    assert hung.entered.wait(_WAIT)
    hub.close()  # returns although the tracker is still inside log_metrics
    assert not hung.closed.is_set()
    assert "warning: tracker recorder did not finish within 0.05 s" in capsys.readouterr().err
    assert hub.workers[0]._thread.daemon  # cannot keep the process alive
    gate.set()


def test_numeric_metrics_are_the_finite_numbers_of_a_line() -> None:
    line = {
        "step": 3,
        "reward": 0.5,
        "kl": math.nan,
        "groups": 4,
        "ok": True,
        "note": "x",
        "missing": None,
        "latency": {"p50": 0.1, "p99": math.inf},
    }
    assert numeric_metrics(line) == {"reward": 0.5, "groups": 4.0, "latency/p50": 0.1}


def _cli(*args: str, hide: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m engine`` with ``hide`` made not importable (as if not installed)."""
    code = (
        "import sys\n"
        f"if {hide!r}: sys.modules[{hide!r}] = None\n"
        "from engine.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("tracker", "module", "extra"),
    [
        ("tensorboard", "tensorboardX", "tensorboard"),
        ("mlflow", "mlflow", "mlflow"),
        ("wandb", "wandb", "wandb"),
        ("trackio", "trackio", "trackio"),
    ],
)
def test_a_tracker_without_its_library_is_one_clear_error(
    tmp_path: Path, tracker: str, module: str, extra: str
) -> None:
    out = tmp_path / "run"
    proc = _cli(
        "run", "--steps", "2", "--out", str(out), "--set", f'report_to=["{tracker}"]', hide=module
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"pip install 'grpo-engine[{extra}]'" in lines[0] and module in lines[0]
    assert not out.exists()  # before any step, nothing written


def test_an_unknown_tracker_is_a_config_error_listing_the_known_ones(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli("run", "--out", str(out), "--set", 'report_to=["comet"]')
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: key 'report_to': unknown tracker 'comet'; "
        "known trackers: tensorboard, mlflow, wandb, trackio"
    )
    assert not out.exists()


def test_a_missing_extra_stops_an_endpoint_run_before_it_writes(tmp_path: Path) -> None:
    """A prompt-policy run (it opens its endpoint clients and event log first) names the
    missing extra before touching its output directory or its server."""
    out = tmp_path / "run"
    proc = _cli(
        "run",
        "--out",
        str(out),
        "--set",
        'policy="prompt"',
        "--set",
        'endpoint.base_url="http://127.0.0.1:9/v1"',
        "--set",
        'report_to=["wandb"]',
        hide="wandb",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: key 'report_to': wandb needs wandb: pip install 'grpo-engine[wandb]'"
    ]
    assert not out.exists()


def test_importing_the_engine_loads_no_tracker_library() -> None:
    code = (
        "import sys, engine, engine.cli.main, engine.training.trainer\n"
        "libs = ('tensorboardX', 'tensorboard', 'mlflow', 'wandb', 'trackio')\n"
        "print([m for m in libs if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
