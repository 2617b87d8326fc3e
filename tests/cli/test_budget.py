"""The spend budget end to end: ``python -m engine run`` against the simulated server with a
cost reported in ``usage.cost`` (and, resumed, a price table entry for its model) stops within
one step of ``limits.max_cost_usd`` with exit status 4, warns once at 50%, 80% and 100%, and
its summary's spent figure is the sum of its events' ``cost_usd``; ``--resume`` continues the
spent total."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.learning.checkpoint import latest_checkpoint
from engine.testing.sim import SimConfig, SimServer
from tests.reliability.support import REPO, grading_model, jsonl_records, run_engine, to_toml

STEPS = 40
CONCURRENCY = 8
BATCH = 2
PER_TOKEN = 4e-6
"""USD per token the sim reports in usage.cost (a step costs about $0.006)."""
PRICE = {"input": 4.0, "output": 4.0}
"""The price table entry of sim-model, USD per 1M tokens: the same as :data:`PER_TOKEN`."""


def run_config(base_url: str, out: Path, budget: float) -> dict[str, Any]:
    return {
        "policy": "prompt",
        "steps": STEPS,
        "seed": 0,
        "out": str(out),
        "grpo": {"group_size": 4, "mini_batch_size": 2},
        # select_served off: this test follows generation and judge spend step by step
        "prompt": {
            "instructions": ["Classify the sentiment of this review."],
            "select_served": False,
        },
        "endpoint": {
            "provider": "local",
            "base_url": base_url,
            "model": "sim-model",
            "max_tokens": 8,
        },
        "limits": {"max_concurrency": CONCURRENCY, "max_cost_usd": budget},
        "reward": {"functions": ["non_empty"], "judge_prompt": "Grade the label's clarity."},
        "data": {"batch_size": BATCH},
        "trainer": {"eval_every": 0, "checkpoint_every": 2},
        "prices": {"sim-model": PRICE},
    }


def requests_of(out: Path) -> list[dict[str, Any]]:
    return [e for e in jsonl_records(out / "events.jsonl") if e.get("kind") not in ("log", "phase")]


def thresholds_logged(out: Path) -> list[int]:
    return [
        e["percent"]
        for e in jsonl_records(out / "events.jsonl")
        if e.get("kind") == "log" and e.get("event") == "spend.threshold"
    ]


def crossing(events: list[dict[str, Any]], budget: float, start: float = 0.0) -> tuple[int, int]:
    """The step of the request whose cost took the running total (in event order) to the
    budget, and how many requests were answered after it (they were in flight then: at most
    the concurrency limit)."""
    total = start
    for i, e in enumerate(events):
        total += e["cost_usd"]
        if total >= budget:
            later = [x for x in events[i + 1 :] if x.get("error_class") is None]
            assert len(later) <= CONCURRENCY, len(later)  # only those already in flight
            return int(e["group_id"].split("-")[0]), len(later)
    raise AssertionError(f"the events never reach the budget: {total} < {budget}")


def check_stopped(
    out: Path, done: Any, budget: float, events: list[dict[str, Any]], start: float
) -> dict[str, Any]:
    """A budget stop: status 4, the summary, the checkpoint, within one step of the cap."""
    assert done.returncode == 4, done.err[-3000:]
    assert "Traceback" not in done.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and summary["budget_usd"] == budget
    spent = summary["spent_usd"]
    assert spent >= budget
    assert spent == pytest.approx(start + sum(e["cost_usd"] for e in events), rel=1e-9)
    steps = summary["steps_done"]
    assert 0 < steps < STEPS
    cap_step, in_flight = crossing(events, budget, start)
    assert steps - 1 <= cap_step + 1  # within one step of the cap
    # the requests in flight at the cap were answered and counted, none cancelled
    assert not [e for e in events if e.get("error_class") == "cancelled"]
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None and ckpt.name == f"step-{steps}"
    metrics = jsonl_records(out / "metrics.jsonl")
    assert metrics[-1]["step"] == steps - 1
    assert metrics[-1]["cost/total_usd"] == pytest.approx(spent, rel=1e-9)
    assert all(m["cost/step_usd"] >= 0 for m in metrics)
    # the batch of the request that spent the budget is trained when its answers made a
    # group (the results of the requests in flight are used); no batch whose every group
    # was refused is trained
    dropped = Counter(
        int(e["group_id"].split("-")[0])
        for e in jsonl_records(out / "events.jsonl")
        if e.get("event") == "group.dropped" and e.get("group_id")
    )
    assert steps - 1 >= cap_step or dropped[cap_step] == BATCH, (cap_step, steps, dropped)
    assert all(m["rollouts"] > 0 for m in metrics), [m["rollouts"] for m in metrics]
    refused = [e for e in events if e.get("error_class") == "budget"]
    assert refused and all(e["cost_usd"] == 0 for e in refused)
    assert f"spend          ${spent:.6g} of ${budget:.6g} budget" in done.err
    return {**summary, "answered_after_cap": in_flight}


async def test_budget_stop_and_resume(tmp_path: Path) -> None:
    out, cfg = tmp_path / "run", tmp_path / "run.toml"
    budget = 0.03
    sim_config = SimConfig(model=grading_model, usage_cost=PER_TOKEN, latency=0.05)
    async with SimServer(sim_config) as sim:
        cfg.write_text(to_toml(run_config(sim.base_url, out, budget)))
        first = await run_engine(["run", "--config", str(cfg), "--quiet"], limit=300)
    events = requests_of(out)
    summary = check_stopped(out, first, budget, events, 0.0)
    assert summary["answered_after_cap"] > 0  # requests were in flight at the cap
    answered = [e for e in events if e.get("error_class") is None]
    assert {e["cost_source"] for e in answered} == {"reported"}
    assert {e["kind"] for e in answered if e["cost_usd"] > 0} == {"generation", "judge"}
    # warnings: once each, on stderr and in the structured log
    assert first.err.count("warning: 50% of the spend budget used") == 1
    assert first.err.count("warning: 80% of the spend budget used") == 1
    assert first.err.count("warning: spend budget spent") == 1
    assert thresholds_logged(out) == [50, 80, 100]

    # resumed with twice the budget, and no reported cost: the price table prices it
    spent1, n1 = summary["spent_usd"], len(events)
    async with SimServer(SimConfig(model=grading_model)) as sim:
        cfg.write_text(to_toml(run_config(sim.base_url, out, 2 * budget)))
        second = await run_engine(
            ["run", "--config", str(cfg), "--resume", str(out), "--quiet"], limit=300
        )
    events = requests_of(out)
    resumed = events[n1:]
    summary2 = check_stopped(out, second, 2 * budget, resumed, spent1)
    assert summary2["spent_usd"] == pytest.approx(sum(e["cost_usd"] for e in events), rel=1e-9)
    assert summary2["steps_done"] > summary["steps_done"]
    print("figures", {k: (summary[k], summary2[k]) for k in
          ("steps_done", "spent_usd", "answered_after_cap")})  # fmt: skip
    answered = [e for e in resumed if e.get("error_class") is None]
    assert {e["cost_source"] for e in answered} == {"price"}
    for e in answered:
        tokens = e["prompt_tokens"] * PRICE["input"] + e["completion_tokens"] * PRICE["output"]
        assert e["cost_usd"] == pytest.approx(tokens / 1e6)
    metrics = jsonl_records(out / "metrics.jsonl")
    first_resumed = next(m for m in metrics if m["step"] == summary["steps_done"])
    assert first_resumed["cost/total_usd"] > spent1  # the total went on from the checkpoint
    # 50% of the new budget was passed before the resume: only 80% and 100% warn now
    assert "warning: 50%" not in second.err
    assert second.err.count("warning: 80% of the spend budget used") == 1
    assert second.err.count("warning: spend budget spent") == 1


async def test_a_run_resumed_with_its_budget_spent_stops_at_once(tmp_path: Path) -> None:
    out, cfg = tmp_path / "run", tmp_path / "run.toml"
    async with SimServer(SimConfig(model=grading_model, usage_cost=PER_TOKEN)) as sim:
        cfg.write_text(to_toml(run_config(sim.base_url, out, 0.02)))
        first = await run_engine(["run", "--config", str(cfg), "--quiet"], limit=300)
        assert first.returncode == 4, first.err[-3000:]
        sent = sim.statistics().requests
        n = len(requests_of(out))
        again = await run_engine(
            ["run", "--config", str(cfg), "--resume", str(out), "--quiet"], limit=300
        )
        assert sim.statistics().requests == sent  # not one request
    assert again.returncode == 4, again.err[-3000:]
    assert len(requests_of(out)) == n
    before = json.loads((out / "summary.json").read_text())
    assert before["stop_reason"] == "budget" and before["spent_usd"] >= 0.02


async def test_no_budget_no_stop_and_costs_still_recorded(tmp_path: Path) -> None:
    """Without limits.max_cost_usd the run goes to the end (status 0), costs recorded."""
    out, cfg = tmp_path / "run", tmp_path / "run.toml"
    async with SimServer(SimConfig(model=grading_model, usage_cost=PER_TOKEN)) as sim:
        table = run_config(sim.base_url, out, 1.0)
        table["steps"] = 3
        del table["limits"]["max_cost_usd"]
        cfg.write_text(to_toml(table))
        done = await run_engine(["run", "--config", str(cfg), "--quiet"], limit=300)
    assert done.returncode == 0, done.err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    events = requests_of(out)
    assert summary["stop_reason"] == "steps" and summary["budget_usd"] is None
    assert summary["spent_usd"] == pytest.approx(sum(e["cost_usd"] for e in events), rel=1e-9)
    assert summary["spent_usd"] > 0 and "warning:" not in done.err


def test_help_documents_exit_status_4() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--help"],
        capture_output=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    text = " ".join(done.stdout.decode().split())
    assert "4 spend budget spent (limits.max_cost_usd)" in text
