"""``python -m engine report``: writes RUN_DIR/report.html or --out; a non-run exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.runs import write_synthetic_run


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A run directory with every metric the report plots, a comparison and a torn last line."""
    return write_synthetic_run(tmp_path / "synthetic")


def test_cli_report(synthetic_run: Path, tmp_path: Path) -> None:
    """python -m engine report writes RUN_DIR/report.html or --out; a non-run exits 2."""
    run = [sys.executable, "-m", "engine", "report"]
    proc = subprocess.run([*run, str(synthetic_run)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (synthetic_run / "report.html").is_file()
    out = tmp_path / "elsewhere" / "r.html"
    proc = subprocess.run(
        [*run, str(synthetic_run), "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and out.is_file()
    proc = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
