"""``python -m engine compare``: the table, comparison.json, config rewards and bad specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import orjson
import pytest

from tests.evaluation.runs import train_tinylm


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short tinylm run (12 steps at lr 0.01) whose final checkpoint beats its step-0 policy."""
    return train_tinylm(tmp_path_factory.mktemp("compare") / "run")


def test_cli_compare_writes_json_and_table(trained_run: Path, tmp_path: Path) -> None:
    """python -m engine compare prints the table and writes OUT/comparison.json."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "compare",
            "--a",
            f"{trained_run}#ref",
            "--b",
            str(trained_run),
            "--samples",
            "2",
            "--limit",
            "16",
            "--resamples",
            "1000",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "quality" in proc.stdout and "B - A" in proc.stdout
    assert "compare    16/16 inputs" in proc.stderr
    data = orjson.loads((out / "comparison.json").read_bytes())
    assert data["n_inputs"] == 16 and set(data["metrics"]) >= {"quality", "diversity", "relevance"}


async def test_cli_compare_configs_on_sim_use_config_rewards(tmp_path: Path) -> None:
    """Two TOML specs on the simulated server, --data FILE: quality is B's [reward]."""
    from engine.testing.sim import SimConfig, SimServer

    data = tmp_path / "eval.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps({"prompt": f"question {i}", "answer": "x"}) + b"\n" for i in range(10)
        )
    )
    async with SimServer(SimConfig(latency=0.0)) as sim:
        for name, extra in (("a", ""), ("b", 'instructions = ["Be accurate."]\n')):
            (tmp_path / f"{name}.toml").write_text(
                f'policy = "prompt"\n[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
                f'[prompt]\n{extra}[reward]\nfunctions = ["non_empty"]\n'
            )
        proc = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "engine",
                "compare",
                "--a",
                str(tmp_path / "a.toml"),
                "--b",
                str(tmp_path / "b.toml"),
                "--data",
                str(data),
                "--samples",
                "2",
                "--resamples",
                "500",
                "--quiet",
            ],
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "quality" in out and "relevance" in out and "10 inputs x 2 samples" in out
    assert "1.0000  1.0000" in out  # non_empty: every sim answer has words


def test_cli_compare_bad_spec_exit_2(tmp_path: Path) -> None:
    """A spec that is not a model ends with one readable line and exit status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "compare", "--a", str(tmp_path), "--b", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a checkpoint directory" in lines[0]
