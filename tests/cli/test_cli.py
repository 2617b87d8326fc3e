"""The command line: run, clear errors with exit 2, clean stop on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from engine.__main__ import main
from engine.telemetry.records import read_records

SMALL = [
    "--set",
    "data.batch_size=4",
    "--set",
    "grpo.group_size=4",
    "--set",
    "data.num_examples=200",
    "--set",
    "trainer.eval_size=8",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout
    )


def test_run_small(tmp_path: Path) -> None:
    """A short run exits 0, prints a summary and writes every output file."""
    out = tmp_path / "run"
    proc = run_cli("run", "--steps", "3", "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "train reward" in proc.stderr and "eval reward" in proc.stderr
    assert "step    3/3" in proc.stderr  # progress lines
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["steps_done"] == 3 and summary["stop_reason"] == "steps"
    assert len(list(read_records(out / "metrics.jsonl"))) == 3
    assert (out / "checkpoints" / "step-3" / "meta.json").exists()


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    """A bad config value ends with one readable line naming the key, exit 2, nothing written."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[grpo]\nepsilon = -1\n")
    out = tmp_path / "never"
    proc = run_cli("run", "--config", str(cfg), "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "grpo.epsilon" in lines[0] and str(cfg) in lines[0]
    assert not out.exists()


def test_bad_data_is_one_line_exit_2(tmp_path: Path) -> None:
    """A malformed dataset line names file and line; nothing half-written."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    out = tmp_path / "never"
    proc = run_cli(
        "run",
        "--set",
        f"data.train={str(data)!r}",
        "--set",
        "data.eval_fraction=0",
        "--out",
        str(out),
    )
    assert proc.returncode == 2
    assert f"{data}:2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_help_explains() -> None:
    """run --help explains the default job, the options and the exit codes."""
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for word in ("--config", "--set", "--resume", "--steps", "--seed", "--out", "exit status"):
        assert word in proc.stdout


def test_print_config_reference(capsys: object) -> None:
    """--print-config prints every section of the reference."""
    assert main(["run", "--print-config"]) == 0


def test_sigint_stops_with_checkpoint_and_resume(tmp_path: Path) -> None:
    """SIGINT stops cleanly (exit 130) with a checkpoint; --resume continues without duplicates."""
    out = tmp_path / "run"
    args = ["run", "--steps", "400", "--out", str(out), *SMALL, "--set", "trainer.eval_every=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args], stderr=subprocess.PIPE, text=True
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.stat().st_size > 0:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stop_reason"] == "interrupted"
    done = summary["steps_done"]
    assert 0 < done < 400
    assert (out / "checkpoints" / f"step-{done}").exists()
    proc2 = run_cli(
        "run",
        "--steps",
        str(done + 2),
        "--out",
        str(out),
        *SMALL,
        "--set",
        "trainer.eval_every=0",
        "--resume",
        str(out),
    )
    assert proc2.returncode == 0, proc2.stderr
    steps = [r["step"] for r in read_records(metrics)]
    assert steps == list(range(done + 2))


def test_import_engine_does_not_load_numpy() -> None:
    """`import engine` stays light, so the CLI can set BLAS threads before numpy loads."""
    code = "import sys, engine, engine.__main__; assert 'numpy' not in sys.modules, 'numpy'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_serve_sim_passes_options_through() -> None:
    """`python -m engine serve-sim --port 0` starts the simulated server and prints its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve-sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("http://127.0.0.1:") and line.rstrip().endswith("/v1")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_rollouts_failing_without_a_request_error_stop_the_run_and_say_where(
    tmp_path: Path,
) -> None:
    """The embedded LM on prompts outside its vocabulary: every rollout fails with no request
    error; after trainer.max_failed_steps such steps the run stops (exit 3) and its one
    error line counts the failed rollouts and points at the group.dropped records."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "word{i}"}}\n' for i in range(20)))
    proc = run_cli(
        "run", "--set", f"data.train={str(data)!r}", "--set", "data.eval_fraction=0",
        "--set", "data.batch_size=2", "--set", "grpo.group_size=2", "--steps", "5",
        "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run stopped: every group failed in 3 consecutive steps")
    assert "rollouts failed" in last and "group.dropped" in last, last
