"""Fault injection: training runs survive a 20% fault rate with nothing lost or counted twice.

The simulated server (in this test's event loop) injects every fault kind at a combined 20%
of requests: 429s with a wait, without one and with junk headers; 500/502/503 and 529;
connection resets; hangs just past the client's read timeout; malformed JSON; truncated
bodies; HTTP 200 carrying an error; fewer choices than ``n``. ``python -m engine run`` trains
the prompt policy with an LLM judge through the client against it, as a user would, and the
test reconciles what the run wrote (see :func:`.support.reconcile`) with what the server saw.

CI runs a short version (about 200 generation requests per partial-group policy); the full
version (``pytest -m slow``) makes more than 2,000 generation requests plus the judge calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.config.sections import EndpointConfig, RetryConfig
from engine.endpoints.client import Client
from engine.errors import ServerError
from engine.telemetry.events import EventLog
from engine.testing.sim import FAULT_KINDS, Faults, SimConfig, SimRequest, SimServer, default_model

from .support import (
    Reconciliation,
    eventually,
    grading_model,
    jsonl_records,
    reconcile,
    record,
    run_engine,
    to_toml,
)

FAULT_RATE = 0.2
TIMEOUT = 0.5
"""Client read timeout, seconds; the sim's hang fault lasts a little longer."""
HANG = 0.6
BATCH = 8
GROUP = 4
INSTRUCTIONS = [
    "Classify the sentiment of this review.",
    "Is this review positive or negative? Answer with one word.",
    "Give a clear, concise and correct label for the sentiment of the review.",
]


def sim_config(seed: int = 0) -> SimConfig:
    """Every fault kind, 20% in all, small waits so the run stays fast."""
    faults = Faults.spread(FAULT_RATE, include_timeout=True, hang_seconds=HANG, retry_after=0.01)
    return SimConfig(seed=seed, latency=0.002, model=grading_model, faults=faults)


def run_config(base_url: str, out: Path, *, steps: int, policy: str) -> dict[str, Any]:
    """The run: the prompt policy plus an LLM judge on the sim, small timeouts and backoff."""
    return {
        "policy": "prompt",
        "steps": steps,
        "seed": 0,
        "out": str(out),
        "grpo": {"group_size": GROUP, "mini_batch_size": 4},
        "prompt": {
            "instructions": INSTRUCTIONS,
            "max_demos": 2,
            "select_served": False,
        },  # no served-choice scoring: these counts are of generation and evaluation
        "endpoint": {
            "provider": "local",
            "base_url": base_url,
            "model": "sim-model",
            "max_tokens": 16,
            "timeout": TIMEOUT,
            "deadline": 60.0,
        },
        "limits": {"max_concurrency": 32},
        "retry": {"max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.1},
        "reward": {
            "functions": ["non_empty"],
            "judge_prompt": "Grade how clear, concise, correct and relevant the label is.",
        },
        "rollout": {"partial_group": policy, "member_retries": 1, "min_group_size": 2},
        "data": {"batch_size": BATCH},
        "trainer": {"eval_every": 0, "checkpoint_every": 0},
    }


async def train_under_faults(
    tmp: Path, *, steps: int, policy: str
) -> tuple[Reconciliation, dict[str, Any]]:
    """One CLI run against the faulty sim; the reconciliation and the sim's statistics."""
    out, export = tmp / f"run-{policy}", tmp / f"groups-{policy}.jsonl"
    async with SimServer(sim_config()) as sim:
        cfg = tmp / f"{policy}.toml"
        cfg.write_text(to_toml(run_config(sim.base_url, out, steps=steps, policy=policy)))
        done = await run_engine(["run", "--config", str(cfg), "--export-groups", str(export)])
        stats = sim.statistics()
    assert done.returncode == 0, done.err[-3000:]
    assert "Traceback" not in done.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_done"] == steps and summary["stop_reason"] == "steps"
    rec = reconcile(out, export, steps=steps, batch=BATCH, group_size=GROUP, policy=policy)

    # every attempt the client made was recorded once and reached the server once; attempts
    # cancelled from outside (the siblings of a failed fan-out) may have reached it or not
    requests = stats.by_endpoint["/v1/chat/completions"]
    cancelled = rec.errors.pop("cancelled", 0)
    attempts = sum(rec.attempts.values())
    assert attempts - cancelled <= requests <= attempts, (rec.attempts, cancelled, requests)
    # every injected fault failed exactly one attempt, classified by what went wrong. Two
    # kinds of slack, both counted: on a busy machine a normal answer can pass the read
    # timeout (`slow`), and an attempt cancelled from outside was whatever it was going to be
    f = stats.faults
    timeouts = rec.errors["timeout"] + rec.errors["deadline"]
    slow = max(0, timeouts - f["timeout"])
    assert -cancelled <= timeouts - f["timeout"] <= max(3, requests // 200), (rec.errors, f)
    rate_limits = f["rate_limit"] + f["rate_limit_bare"] + f["rate_limit_junk"]
    assert rate_limits - cancelled <= rec.errors["rate_limit"] <= rate_limits, (rec.errors, f)
    server = f["server_error"] + f["overloaded"]
    assert server - slow - cancelled <= rec.errors["server"] <= server, (rec.errors, f)
    broken = f["reset"] + f["truncated"] + f["malformed"] + f["error_200"]
    # short_n fails an n=1 request (no choices at all); for n > 1 the client asks for the rest
    got = rec.errors["transport"] + rec.errors["response"]
    assert broken - slow - cancelled <= got <= broken + f["short_n"], (rec.errors, f)
    assert sum(rec.errors.values()) <= sum(f.values()) + slow
    assert not set(rec.errors) - {"rate_limit", "server", "timeout", "deadline", "transport",
                                  "response"}  # fmt: skip
    figures = {
        "policy": policy,
        "requests": requests,
        "generation_attempts": rec.attempts["generation"],
        "judge_attempts": rec.attempts["judge"],
        "faults": {k: f[k] for k in FAULT_KINDS},
        "faults_total": sum(f.values()),
        "timeouts_without_fault": slow,
        "cancelled_attempts": cancelled,
        **rec.row(),
    }
    return rec, figures


@pytest.mark.parametrize("policy", ["retry", "shrink", "drop"])
async def test_training_survives_faults(tmp_path: Path, policy: str) -> None:
    """A short run at a 20% fault rate completes and reconciles, under each partial-group policy."""
    rec, figures = await train_under_faults(tmp_path, steps=8, policy=policy)
    assert figures["generation_attempts"] >= 150 and figures["faults_total"] >= 20, figures
    assert len([k for k, v in figures["faults"].items() if v]) >= 6, figures
    assert rec.complete > 0
    record(f"faults-ci-{policy}", figures)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["retry", "shrink", "drop"])
async def test_training_survives_faults_long(tmp_path: Path, policy: str) -> None:
    """More than 2,000 generation requests plus judge calls at a 20% fault rate reconcile."""
    rec, figures = await train_under_faults(tmp_path, steps=90, policy=policy)
    assert figures["generation_attempts"] >= 2000, figures
    assert all(figures["faults"][k] > 0 for k in FAULT_KINDS), figures
    assert rec.complete > 0
    if policy == "retry":  # failed members were re-requested (and nearly always recovered)
        assert rec.retried > 0
    else:  # the policy had groups to act on
        assert rec.dropped + rec.shrunk > 0
    record(f"faults-slow-{policy}", figures)


async def test_short_choices_are_topped_up_to_n(tmp_path: Path) -> None:
    """With fewer choices than n half the time, every call still returns exactly n choices."""
    events = EventLog(tmp_path / "events.jsonl")
    retry = RetryConfig(max_attempts=8, backoff_base=0.01, backoff_cap=0.05)
    async with (
        SimServer(SimConfig(faults=Faults(short_n=0.5))) as sim,
        Client(EndpointConfig(base_url=sim.base_url), retry=retry, events=events) as client,
    ):
        for i in range(30):
            out = await client.complete(f"prompt {i}", n=4, group_id=f"0-{i}")
            assert len(out.choices) == 4 and [c.index for c in out.choices] == [0, 1, 2, 3]
        faults = sim.statistics().faults["short_n"]
    events.close()
    assert faults > 0
    evs = jsonl_records(tmp_path / "events.jsonl")
    assert {e["group_id"] for e in evs} == {f"0-{i}" for i in range(30)}


async def test_cancelled_attempts_are_recorded(tmp_path: Path) -> None:
    """The in-flight siblings of a failed fan-out are cancelled and still recorded, one each."""

    def model(req: SimRequest) -> str:
        if req.seed == 101:
            raise RuntimeError("this sibling fails")
        return default_model(req)

    events = EventLog(tmp_path / "events.jsonl")
    async with SimServer(SimConfig(latency=0.3, model=model)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, use_n=False, deadline=30.0)
        async with Client(endpoint, retry=RetryConfig(max_attempts=1), events=events) as client:
            with pytest.raises(ServerError):
                await client.complete("fan me out", n=3, seed=100, group_id="0-0")
        await eventually(lambda: sim.counters.in_flight == 0, 5)
        stats = sim.statistics()
    events.close()
    evs = jsonl_records(tmp_path / "events.jsonl")
    assert sorted(e["error_class"] for e in evs) == ["cancelled", "cancelled", "server"]
    assert stats.by_endpoint["/v1/chat/completions"] == len(evs) == 3
    assert stats.cancelled == 2 and all(e["group_id"] == "0-0" for e in evs)


# ----------------------------------------------------------------------------- all failing


def failing_run(base_url: str, out: Path, *, steps: int) -> dict[str, Any]:
    """The prompt policy on a sim that fails every request; evaluations every 2 steps."""
    return {
        "policy": "prompt",
        "steps": steps,
        "out": str(out),
        "grpo": {"group_size": 2},
        "prompt": {"instructions": INSTRUCTIONS[:1]},
        "endpoint": {"provider": "local", "base_url": base_url, "max_tokens": 8},
        "retry": {"max_attempts": 2, "backoff_base": 0.01, "backoff_cap": 0.02},
        "reward": {"functions": ["non_empty"]},
        "data": {"batch_size": 2},
        "trainer": {"eval_every": 2, "eval_size": 4, "checkpoint_every": 0},
    }


@pytest.mark.parametrize(("limit", "steps", "stop"), [(3, 1000, 3), (5, 1000, 5), (3, 2, 2)])
async def test_every_request_failing_stops_the_run(
    tmp_path: Path, limit: int, steps: int, stop: int
) -> None:
    """Every request fails: the run stops after trainer.max_failed_steps all-failed steps (or
    at the end of a shorter run) with exit status 3, stop reason 'failures' and one error
    line; the held-out evaluation counts its failures and reports no reward (it used to score
    the empty texts 0)."""
    out = tmp_path / "run"
    async with SimServer(SimConfig(faults=Faults(server_error=1.0))) as sim:
        (tmp_path / "run.toml").write_text(to_toml(failing_run(sim.base_url, out, steps=steps)))
        args = ["run", "--config", str(tmp_path / "run.toml")]
        args += ["--set", f"trainer.max_failed_steps={limit}"] if limit != 3 else []
        done = await run_engine(args, limit=300)
    assert done.returncode == 3, done.err[-3000:]
    assert "Traceback" not in done.err
    last = done.err.strip().splitlines()[-1]
    assert last.startswith(f"error: run stopped: every group failed in {stop} consecutive"), last
    assert f"steps 0 to {stop - 1}" in last and "server" in last, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "failures" and summary["steps_done"] == stop
    assert summary["stop_detail"] in last
    assert summary["eval_before"] is None and summary["best_eval"] is None
    assert summary["eval_failures"]["before"] == 4
    metrics = jsonl_records(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(stop))
    evals = [m for m in metrics if "eval/failures" in m]
    assert evals and all(m["eval/reward"] is None and m["eval/failures"] == 4 for m in evals)
    assert (out / "checkpoints" / f"step-{stop}").is_dir()
    record(
        f"all-failing-{limit}-{steps}", {"exit": done.returncode, "steps_done": stop, "line": last}
    )


async def test_max_failed_steps_zero_never_stops(tmp_path: Path) -> None:
    """trainer.max_failed_steps = 0: a run whose requests all fail runs its steps (exit 0);
    its evaluations still report failures, not a reward of 0."""
    out = tmp_path / "run"
    async with SimServer(SimConfig(faults=Faults(server_error=1.0))) as sim:
        (tmp_path / "run.toml").write_text(to_toml(failing_run(sim.base_url, out, steps=4)))
        args = ["run", "--config", str(tmp_path / "run.toml")]
        done = await run_engine([*args, "--set", "trainer.max_failed_steps=0"], limit=300)
    assert done.returncode == 0, done.err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "steps" and summary["steps_done"] == 4
    assert summary["eval_before"] is None and summary["eval_after"] is None
    assert summary["eval_failures"] == {"before": 4, "after": 4}
    assert "before n/a  ->  after n/a  (greedy, held-out; failed: before 4, after 4)" in done.err


async def test_max_failed_steps_is_validated(tmp_path: Path) -> None:
    """A negative trainer.max_failed_steps is bad input: one error line, exit 2, no files."""
    out = tmp_path / "run"
    done = await run_engine(
        ["run", "--out", str(out), "--set", "trainer.max_failed_steps=-1"], limit=120
    )
    assert done.returncode == 2
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "max_failed_steps" in lines[0]
    assert "must be >= 0" in lines[0], lines
    assert not out.exists()
