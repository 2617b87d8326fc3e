"""The Prometheus endpoint of a run, scraped during real ``python -m engine run`` processes and
parsed with ``prometheus_client``'s own parser (the ``test`` extra installs it)."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from engine.telemetry.events import EventLog
from engine.telemetry.prometheus import CONTENT_TYPE, PrometheusServer, RunMetrics
from engine.telemetry.records import read_records
from engine.testing.sim import Faults, SimConfig, SimServer
from tests.reliability.support import REPO, engine_env, finish, grading_model, start_engine, to_toml

parser = pytest.importorskip("prometheus_client.parser")

_URL = re.compile(r"prometheus metrics: (http://127\.0\.0\.1:\d+/metrics)")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` as prometheus_client parses the text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parser.text_string_to_metric_families(text)
        for s in fam.samples
    }


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
         **labels: str) -> float:  # fmt: skip
    return samples[(name, tuple(sorted(labels.items())))]


def test_exposition_counts_events_and_escapes_labels() -> None:
    """Every request event is counted by kind, class and token type; label values with
    quotes, backslashes and newlines survive the parser; NaN gauges parse."""
    m = RunMetrics()
    events = EventLog()
    m.attach(events)
    events.emit(kind="generation", latency=0.5, queue_wait=0.25, prompt_tokens=7,
                completion_tokens=3, cost=0.5)  # fmt: skip
    events.emit(kind="judge", latency=0.25, error_class='odd "class"\\\n', cost_usd=0.125)
    events.emit(kind="judge", latency=0.0, error_class="cancelled")
    events.record_phase("update", start=1.0, duration=2.0, step=0)
    with events.track("judge"):
        s = _samples(m.render())
        assert _get(s, "grpo_requests_in_flight", kind="judge") == 1
    s = _samples(m.render())
    assert _get(s, "grpo_requests_total", kind="generation") == 1
    assert _get(s, "grpo_requests_total", kind="judge") == 2
    assert _get(s, "grpo_request_errors_total", kind="judge", error_class='odd "class"\\\n') == 1
    assert _get(s, "grpo_requests_cancelled_total", kind="judge") == 1
    assert _get(s, "grpo_tokens_total", kind="generation", type="prompt") == 7
    assert _get(s, "grpo_tokens_total", kind="generation", type="completion") == 3
    assert _get(s, "grpo_cost_usd_total", kind="judge") == 0.125  # cost_usd when present
    assert _get(s, "grpo_cost_usd_total", kind="generation") == 0.5  # else the endpoint's cost
    assert _get(s, "grpo_request_latency_seconds_sum", kind="generation") == 0.5
    assert _get(s, "grpo_request_latency_seconds_count", kind="judge") == 2
    assert _get(s, "grpo_queue_wait_seconds_total", kind="generation") == 0.25
    assert _get(s, "grpo_phase_seconds_total", phase="update") == 2.0
    assert _get(s, "grpo_requests_in_flight", kind="judge") == 0
    assert math.isnan(_get(s, "grpo_reward")) and _get(s, "grpo_step") == 0
    m.observe_step(4, {"reward": 0.75, "step_time": 1.5})
    s = _samples(m.render())
    assert (_get(s, "grpo_step"), _get(s, "grpo_reward"), _get(s, "grpo_step_seconds")) == (
        5,
        0.75,
        1.5,
    )


async def test_server_serves_and_measures_loop_lag() -> None:
    """The endpoint answers on 127.0.0.1 with the exposition content type, reports the loop's
    lag (a blocking call is seen), and its port is free again once closed."""
    async with PrometheusServer(RunMetrics(), port=0) as server, aiohttp.ClientSession() as s:
        assert server.url.startswith("http://127.0.0.1:")
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # noqa: ASYNC251  (blocks the loop on purpose: the probe must see it)
        await asyncio.sleep(0.6)
        async with s.get(server.url) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == CONTENT_TYPE
            samples = _samples(await resp.text())
        async with s.get(server.url.replace("/metrics", "/other")) as resp:
            assert resp.status == 404
    # a probe's 0.25 s timer was pending when the loop blocked for 0.6 s: it fired >= 0.35 late
    assert _get(samples, "grpo_event_loop_lag_max_seconds") >= 0.3
    assert _get(samples, "grpo_up") == 1
    with socket.create_server(("127.0.0.1", server.port)):
        pass  # released


async def _read_url(proc: asyncio.subprocess.Process) -> str:
    """The endpoint's URL, from the run's stderr."""
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(120):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the run ended before serving metrics:\n" + "".join(seen)
            seen.append(line)
            if m := _URL.search(line):
                return m.group(1)


async def _scrape_until(url: str, done: object, limit: float = 180) -> str:
    """Scrape ``url`` every 0.2 s until ``done(samples)``; the last text."""
    assert callable(done)
    async with aiohttp.ClientSession() as session, asyncio.timeout(limit):
        while True:
            async with session.get(url) as resp:
                assert resp.status == 200
                text = await resp.text()
            if done(_samples(text)):
                return text
            await asyncio.sleep(0.2)


async def test_scraped_during_a_default_run(tmp_path: Path) -> None:
    """``python -m engine run --prometheus-port 0`` (the embedded default policy, offline)
    serves growing counters, the step and reward while it trains; the counts never exceed
    what events.jsonl records; SIGINT still stops it cleanly."""
    out = tmp_path / "run"
    proc = await start_engine(["run", "--steps", "2000", "--out", str(out), "--quiet",
                               "--prometheus-port", "0"])  # fmt: skip
    try:
        url = await _read_url(proc)
        first = _samples(await _scrape_until(url, lambda s: _get(s, "grpo_step") >= 2))
        later = _samples(
            await _scrape_until(url, lambda s: _get(s, "grpo_step") >= _get(first, "grpo_step") + 3)
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    done = await finish(proc, 300)
    assert done.returncode == 130, done.err[-2000:]
    for s in (first, later):
        assert _get(s, "grpo_requests_total", kind="generation") > 0
        assert _get(s, "grpo_tokens_total", kind="generation", type="completion") > 0
        assert math.isfinite(_get(s, "grpo_reward"))
        assert _get(s, "grpo_event_loop_lag_seconds") >= 0
        assert _get(s, "grpo_requests_in_flight", kind="generation") >= 0
        assert _get(s, "grpo_phase_seconds_total", phase="update") > 0
    grew = ("grpo_requests_total", (("kind", "generation"),))
    assert later[grew] > first[grew]
    requests = [e for e in read_records(out / "events.jsonl") if e["kind"] == "generation"]
    assert later[grew] <= len(requests)
    tokens = sum(e["completion_tokens"] for e in requests)
    assert _get(later, "grpo_tokens_total", kind="generation", type="completion") <= tokens


async def test_scraped_during_a_judged_run_with_faults(tmp_path: Path) -> None:
    """Against the simulated server with server errors and 429s: errors by class, judge
    requests and queue waits are served, and match events.jsonl once the run ends."""
    out = tmp_path / "run"
    faults = Faults(server_error=0.1, rate_limit=0.05, retry_after=0.01)
    async with SimServer(SimConfig(model=grading_model, latency=0.02, faults=faults)) as sim:
        cfg = tmp_path / "run.toml"
        cfg.write_text(to_toml({
            "policy": "prompt", "steps": 400, "out": str(out),
            "grpo": {"group_size": 4, "mini_batch_size": 4},
            "prompt": {"instructions": ["Label the review.", "Positive or negative?"],
                       # no served-choice scoring: these counts are of generation and evaluation
                       "select_served": False},
            "endpoint": {"provider": "local", "base_url": sim.base_url, "model": "sim-model",
                         "max_tokens": 8, "timeout": 30.0, "deadline": 120.0},
            "limits": {"max_concurrency": 2},
            "retry": {"max_attempts": 6, "backoff_base": 0.01, "backoff_cap": 0.05},
            "reward": {"functions": ["non_empty"], "judge_prompt": "Grade the label."},
            "data": {"batch_size": 4},
            "trainer": {"eval_every": 0, "checkpoint_every": 0},
        }))  # fmt: skip
        proc = await start_engine(["run", "--config", str(cfg), "--quiet",
                                   "--prometheus-port", "0"])  # fmt: skip
        try:
            url = await _read_url(proc)

            def seen_errors(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
                classes = {
                    dict(k[1]).get("error_class") for k in s if k[0].endswith("errors_total")
                }
                return {"server", "rate_limit"} <= classes and _get(s, "grpo_step") >= 2

            samples = _samples(await _scrape_until(url, seen_errors))
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
        done = await finish(proc, 300)
    assert done.returncode == 130, done.err[-2000:]
    assert _get(samples, "grpo_requests_total", kind="judge") > 0
    assert _get(samples, "grpo_queue_wait_seconds_total", kind="judge") > 0
    events = [e for e in read_records(out / "events.jsonl") if e["kind"] in ("generation", "judge")]
    for cls in ("server", "rate_limit"):
        scraped = sum(
            v
            for (name, labels), v in samples.items()
            if name == "grpo_request_errors_total" and ("error_class", cls) in labels
        )
        assert 0 < scraped <= sum(1 for e in events if e.get("error_class") == cls)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "run", *args], capture_output=True,
                          text=True, timeout=120, env=engine_env(), cwd=REPO)  # fmt: skip


def test_bad_port_is_bad_input(tmp_path: Path) -> None:
    """An out-of-range port, or one in use, is one ``error:`` line, exit 2, nothing written."""
    out = tmp_path / "run"
    proc = _run_cli("--out", str(out), "--prometheus-port", "70000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "--prometheus-port" in proc.stderr
    proc = _run_cli("--out", str(out), "--set", "telemetry.prometheus_port=70000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "telemetry.prometheus_port" in proc.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = _run_cli("--out", str(out), "--prometheus-port", str(port))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "cannot serve Prometheus metrics" in proc.stderr
    assert not out.exists()


def test_a_resumed_run_serves_its_metrics(tmp_path: Path) -> None:
    """``--resume DIR --prometheus-port 0``: [telemetry] may change on resume (it does not
    change the run's trajectory), and the resumed run serves its metrics."""
    out = tmp_path / "run"
    first = _run_cli("--out", str(out), "--steps", "2", "--quiet")
    assert first.returncode == 0, first.stderr
    again = _run_cli("--resume", str(out), "--steps", "3", "--quiet", "--prometheus-port", "0")
    assert again.returncode == 0, again.stderr
    assert _URL.search(again.stderr), again.stderr
    rows = list(read_records(out / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2]
