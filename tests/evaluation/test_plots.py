"""Which training plots a run gets: absent plots are named, the prompt plot falls back."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.evaluation.report import load_run, render_report


def test_report_of_a_sparse_run_lists_absent_plots(tmp_path: Path) -> None:
    """A run with only rewards draws the reward plot and names the plots it cannot draw."""
    (tmp_path / "metrics.jsonl").write_bytes(
        b"".join(orjson.dumps({"step": s, "reward": 0.1 * s}) + b"\n" for s in range(5))
    )
    page = render_report(load_run(tmp_path))
    assert 'id="chart-reward"' in page and 'id="chart-kl-to-the-reference-policy"' not in page
    assert "Not recorded in this run:" in page and "Prompt candidates" in page
    assert "No summary.json" in page and "No comparison.json" in page


def test_prompt_policy_without_per_candidate_keys(tmp_path: Path) -> None:
    """Without candidate_prob/<id> keys the prompt plot falls back to prompt/best_prob."""
    rows = [
        {"step": s, "reward": 0.1, "prompt/best_prob": 0.3 + 0.1 * s, "prompt/candidates": 3 + s}
        for s in range(5)
    ]
    (tmp_path / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    page = render_report(load_run(tmp_path))
    assert 'id="chart-prompt-candidates"' in page and ">best candidate</text>" in page
    assert 'id="chart-candidate-pool"' in page
