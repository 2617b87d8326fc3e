"""Reading a run directory for the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.evaluation.report import load_run


def test_load_run_rejects_a_non_run(tmp_path: Path) -> None:
    """A directory without metrics or summary is a DataError naming it."""
    from engine.errors import DataError

    with pytest.raises(DataError, match="not a run directory"):
        load_run(tmp_path)
