"""benchmarks/served_rules.py on a real bench_prompt --diagnose run (the simulated server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_prompt, served_rules


def test_the_rules_replay_the_engines_served_choice_from_its_diagnosis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    argv = ["--sim", "--tasks", "capitals", "sentiment", "--seeds", "0", "1", "--diagnose"]
    assert bench_prompt.main([*argv, "--methods", "exhaustive", "engine", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    rows = served_rules.compare(runs)
    assert len(rows) == 4
    for run, row in zip(runs, rows, strict=True):
        diag = run["engine"]["diagnosis"]
        served = run["engine"]["served"]["candidate"]
        assert served_rules.picks(diag)["validation_first"] == served  # the default rule
        assert row["validation_first"] == row["engine"]
        assert all(row[r] <= row["best"] for r in served_rules.RULES)
        assert all(len(c["test"]) == 16 and "object" not in c for c in diag["candidates"].values())
    capsys.readouterr()
    assert served_rules.main([str(out)]) == 0
    table = capsys.readouterr().out
    assert "| **mean** | 4 runs |" in table and "validation_first" in table
    plain = tmp_path / "plain.json"
    bench_prompt.main(["--sim", "--tasks", "capitals", "--seeds", "0", "--methods", "engine",
                       "--json", str(plain)])  # fmt: skip
    with pytest.raises(SystemExit):  # no --diagnose: nothing to compare, said so
        served_rules.main([str(plain)])
