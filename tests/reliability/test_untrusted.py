"""Server data is untrusted input: what a hostile or broken endpoint may not make the client do.

Every test talks to the simulated server (:mod:`engine.testing.sim`) over loopback HTTP through
the real :class:`~engine.endpoints.client.Client` and its event log, with the server's hostile
faults (:data:`~engine.testing.sim.HOSTILE_KINDS`) and a ``rate_limit`` fault asking for an
hour. Each checks the failure is classified, its event written, and that the client goes on
serving once the server behaves. The end-to-end test runs ``python -m engine run`` against a
server whose 429s ask for 3,600 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client
from engine.errors import DeadlineExceeded, ResponseError
from engine.telemetry.events import EventLog
from engine.testing.sim import BAD_USAGES, Faults, SimConfig, SimServer

from .support import KNOWN_ERROR_CLASSES, grading_model, jsonl_records, record, run_engine, to_toml

HOUR = 3600.0


def client_for(
    sim: SimServer,
    events: EventLog,
    *,
    deadline: float = 30.0,
    max_server_wait: float = 60.0,
    max_attempts: int = 4,
    limits: LimitsConfig | None = None,
    **endpoint: Any,
) -> Client:
    cfg = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8, timeout=5.0,
                         deadline=deadline, **endpoint)  # fmt: skip
    retry = RetryConfig(max_attempts=max_attempts, backoff_base=0.01, backoff_cap=0.05,
                        max_server_wait=max_server_wait)  # fmt: skip
    return Client(cfg, limits=limits or LimitsConfig(max_concurrency=8), retry=retry, events=events)


def attempt_events(path: Path) -> list[dict[str, Any]]:
    events = [e for e in jsonl_records(path) if e.get("kind") == "generation"]
    for e in events:
        assert e.get("error_class") in KNOWN_ERROR_CLASSES | {None}, e
    return events


# ----------------------------------------------------------------------------- waits


async def test_an_hour_long_retry_after_is_capped(tmp_path: Path) -> None:
    """429s asking for an hour pause every sender for ``max_server_wait`` only: 16 calls
    through a server answering a fifth of them so all succeed, in seconds, not hours."""
    faults = Faults(rate_limit=0.2, retry_after=HOUR)
    events = EventLog(tmp_path / "events.jsonl")
    async with SimServer(SimConfig(seed=3, faults=faults)) as sim:
        async with client_for(sim, events, max_server_wait=0.2, max_attempts=10) as client:
            t0 = time.monotonic()
            outs = await asyncio.gather(*(client.complete(f"q{i}") for i in range(16)))
            elapsed = time.monotonic() - t0
            stats = client.statistics()
        rate_limited = sim.counters.faults["rate_limit"]
    events.close()
    assert len(outs) == 16 and rate_limited > 0
    assert stats.waits_capped == rate_limited
    evs = attempt_events(tmp_path / "events.jsonl")
    waits = [e["retry_in"] for e in evs if e["error_class"] == "rate_limit"]
    assert len(waits) == rate_limited and max(waits) == pytest.approx(0.2)
    assert elapsed < 25, elapsed  # the client's deadline is 30 s; an uncapped wait is 3,600 s
    record("untrusted_waits", {"calls": 16, "rate_limited": rate_limited,
                               "elapsed_s": round(elapsed, 2)})  # fmt: skip


async def test_a_wait_past_the_deadline_fails_at_once(tmp_path: Path) -> None:
    """A server wait longer than what is left of the deadline (an hour, capped to 8 s,
    against 6 s) fails the call at once, as does a call that would queue behind the shared
    pause, each with its event; once the pause is over the client serves again."""
    events = EventLog(tmp_path / "events.jsonl")
    async with (
        SimServer(SimConfig(faults=Faults(rate_limit=1.0, retry_after=HOUR))) as sim,
        client_for(sim, events, deadline=30.0, max_server_wait=8.0) as client,
    ):
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="would pass the deadline"):
            await client.complete("first", deadline=6.0)
        sim.set_faults()  # the server is fine again, but the pause (8 s) is not over
        with pytest.raises(DeadlineExceeded, match="rate-limit pause"):
            await client.complete("second", deadline=6.0)
        elapsed = time.monotonic() - t0
        out = await client.complete("third")  # waits out the 8 s pause, then succeeds
        limiter = client.statistics().limiter
    events.close()
    assert elapsed < 5, elapsed  # both failed well before their 6 s deadline
    assert out.choices and limiter is not None and limiter.gate_waits >= 1
    evs = attempt_events(tmp_path / "events.jsonl")
    assert [(e["error_class"], e["retry_in"]) for e in evs] == [
        ("rate_limit", None), ("deadline", None), (None, None)
    ]  # fmt: skip


# ----------------------------------------------------------------------------- usage


async def test_unsound_usage_is_recorded_and_never_trusted(tmp_path: Path) -> None:
    """Negative, absurd, string, bool, fractional, null and missing usage: every call succeeds,
    each anomaly is counted and in its event, the token budget is charged an estimate (no
    debt), and a later call is admitted at once."""
    events = EventLog(tmp_path / "events.jsonl")
    limits = LimitsConfig(tpm=600_000, max_concurrency=4)  # a 10,000-token bucket
    rounds = 2 * len(BAD_USAGES)
    async with (
        SimServer(SimConfig(faults=Faults(bad_usage=1.0))) as sim,
        client_for(sim, events, limits=limits) as client,
    ):
        outs = [await client.complete(f"q{i}") for i in range(rounds)]
        stats = client.statistics()
        sim.set_faults()
        t0 = time.monotonic()
        await client.complete("after")
        after = time.monotonic() - t0
    events.close()
    assert stats.limiter is not None and stats.limiter.token_debt == 0
    assert dict(stats.usage_anomalies) == {"negative": 2, "huge": 2, "malformed": 6, "missing": 6}
    for out in outs:  # an estimate: the prompt estimate plus the text at 4 characters a token
        assert 0 < out.usage.total_tokens <= 1 + 8, out.usage  # never above the reservation
    evs = attempt_events(tmp_path / "events.jsonl")
    anomalies = [e["usage_anomaly"] for e in evs]
    assert anomalies[:rounds] == ["negative", "huge", "malformed", "malformed", "malformed",
                                  "missing", "missing", "missing"] * 2  # fmt: skip
    assert anomalies[rounds] is None and all(e["status"] == 200 for e in evs)
    assert after < 20, after  # the debt of a trusted 10**12 would hold it for years


# ----------------------------------------------------------------------------- bodies


async def test_an_oversized_body_stops_reading_at_the_cap(tmp_path: Path) -> None:
    """A 4 MiB body against a 256 KiB cap: with a length announced and chunked, each call
    fails as a response error, not retried, its event written; then the client goes on."""
    events = EventLog(tmp_path / "events.jsonl")
    faults = Faults(oversized=1.0, oversize_bytes=4 * 1024 * 1024)
    async with (
        SimServer(SimConfig(faults=faults)) as sim,
        client_for(sim, events, max_response_bytes=256 * 1024) as client,
    ):
        for _ in range(2):
            with pytest.raises(ResponseError, match="max_response_bytes") as info:
                await client.complete("big")
            assert info.value.attempt == 1 and not info.value.retryable
        sim.set_faults()
        assert (await client.complete("small")).choices
    events.close()
    evs = attempt_events(tmp_path / "events.jsonl")
    assert [e["error_class"] for e in evs] == ["response", "response", None]


async def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    """200 levels (which orjson reads) and 100,000 (which it refuses) are both response
    errors naming the depth, not retried; then the client goes on."""
    events = EventLog(tmp_path / "events.jsonl")
    async with (
        SimServer(SimConfig(faults=Faults(deep_json=1.0, deep_levels=200))) as sim,
        client_for(sim, events) as client,
    ):
        for _ in range(2):
            with pytest.raises(ResponseError, match="nested deeper than 64") as info:
                await client.complete("deep")
            assert info.value.attempt == 1
        sim.set_faults()
        assert (await client.complete("flat")).choices
    events.close()
    evs = attempt_events(tmp_path / "events.jsonl")
    assert [e["error_class"] for e in evs] == ["response", "response", None]


async def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A 307 to another origin is an error naming the location (without its query), not
    retried; the other server never hears of the request."""
    events = EventLog(tmp_path / "events.jsonl")
    async with SimServer() as elsewhere:
        origin = elsewhere.base_url.removesuffix("/v1")
        faults = Faults(redirect=1.0, redirect_to=origin)
        async with (
            SimServer(SimConfig(faults=faults)) as sim,
            client_for(sim, events) as client,
        ):
            with pytest.raises(ResponseError, match="redirect") as info:
                await client.complete("where")
            sim.set_faults()
            assert (await client.complete("here")).choices
        assert elsewhere.counters.requests == 0
    events.close()
    message = str(info.value)
    assert f"{origin}/v1/chat/completions" in message and "sim-redirect-secret" not in message
    assert info.value.status == 307 and info.value.attempt == 1
    evs = attempt_events(tmp_path / "events.jsonl")
    assert [(e["status"], e["error_class"]) for e in evs] == [(307, "response"), (200, None)]


# ----------------------------------------------------------------------------- end to end


async def test_run_with_hour_long_retry_after_finishes_promptly(tmp_path: Path) -> None:
    """``python -m engine run`` against a server whose 429s ask for 3,600 s: with
    ``retry.max_server_wait = 0.5`` it finishes every step within minutes (in about ten
    seconds on the development machine), exit 0, each capped wait in the events."""
    out = tmp_path / "run"
    faults = Faults(rate_limit=0.15, retry_after=HOUR)
    async with SimServer(SimConfig(seed=1, latency=0.002, model=grading_model,
                                   faults=faults)) as sim:  # fmt: skip
        cfg = {
            "policy": "prompt",
            "steps": 4,
            "out": str(out),
            "grpo": {"group_size": 4},
            "prompt": {"instructions": ["Classify the sentiment of this review."]},
            "endpoint": {"base_url": sim.base_url, "model": "sim-model", "max_tokens": 8,
                         "timeout": 5.0, "deadline": 60.0},
            "retry": {"max_attempts": 4, "backoff_base": 0.01, "backoff_cap": 0.1,
                      "max_server_wait": 0.5},
            "reward": {"functions": ["non_empty"]},
            "data": {"batch_size": 4},
        }  # fmt: skip
        (tmp_path / "run.toml").write_text(to_toml(cfg))
        t0 = time.monotonic()
        done = await run_engine(["run", "--config", str(tmp_path / "run.toml")], limit=240)
        elapsed = time.monotonic() - t0
        rate_limited = sim.counters.faults["rate_limit"]
    assert done.returncode == 0, done.err[-3000:]
    assert rate_limited > 0
    assert len(jsonl_records(out / "metrics.jsonl")) == 4
    evs = [e for e in jsonl_records(out / "events.jsonl") if e.get("error_class") == "rate_limit"]
    assert len(evs) == rate_limited and all(e["retry_in"] in (0.5, None) for e in evs)
    record("untrusted_run", {"steps": 4, "rate_limited": rate_limited,
                             "elapsed_s": round(elapsed, 1)})  # fmt: skip


async def test_run_through_hostile_answers_continues(tmp_path: Path) -> None:
    """``python -m engine run`` with a token budget, against a server whose answers are in
    part unsound usage, oversized, deeply nested, echoing the key or redirecting elsewhere:
    exit 0, every step done, the anomalies and the refused answers in the events, no key in
    the run directory, and the other origin never asked."""
    out = tmp_path / "run"
    key = "sk-untrusted-run-5d1c9e0b7a3f"
    async with SimServer() as elsewhere:
        faults = Faults(bad_usage=0.15, oversized=0.03, deep_json=0.03, echo_key=0.05,
                        redirect=0.03, oversize_bytes=1024 * 1024,
                        redirect_to=elsewhere.base_url.removesuffix("/v1"))  # fmt: skip
        sim_cfg = SimConfig(seed=2, latency=0.002, model=grading_model, faults=faults, api_key=key)
        async with SimServer(sim_cfg) as sim:
            cfg = {
                "policy": "prompt",
                "steps": 5,
                "out": str(out),
                "grpo": {"group_size": 4},
                "prompt": {"instructions": ["Classify the sentiment of this review."]},
                "endpoint": {"base_url": sim.base_url, "model": "sim-model", "max_tokens": 8,
                             "timeout": 5.0, "deadline": 60.0, "api_key_env": "UNTRUSTED_KEY",
                             "max_response_bytes": 256 * 1024},
                "limits": {"tpm": 120_000},
                "retry": {"max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.1},
                "reward": {"functions": ["non_empty"]},
                "rollout": {"partial_group": "shrink"},
                "data": {"batch_size": 4},
            }  # fmt: skip
            (tmp_path / "run.toml").write_text(to_toml(cfg))
            done = await run_engine(["run", "--config", str(tmp_path / "run.toml")],
                                    env={"UNTRUSTED_KEY": key}, limit=240)  # fmt: skip
            injected = sim.counters.faults
        assert elsewhere.counters.requests == 0
    assert done.returncode == 0, done.err[-3000:]
    assert len(jsonl_records(out / "metrics.jsonl")) == 5
    events = [e for e in jsonl_records(out / "events.jsonl") if e.get("kind") == "generation"]
    anomalies = sum(1 for e in events if e.get("usage_anomaly"))
    refused = [e for e in events if e.get("error_class") == "response"]
    assert anomalies == injected["bad_usage"] > 0, (anomalies, injected)
    hostile = injected["oversized"] + injected["deep_json"] + injected["redirect"]
    assert len(refused) == hostile > 0, (len(refused), injected)
    assert injected["echo_key"] > 0
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    figures = {"faults": dict(injected), "usage_anomalies": anomalies, "refused": len(refused)}
    record("untrusted_hostile_run", {"steps": 5, **figures})
