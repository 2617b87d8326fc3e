"""engine.telemetry.events: what a step's request statistics count, and when they reset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.telemetry.events import (
    LATENCY_SAMPLE,
    EventLog,
    LatencySample,
    MetricsLog,
    RequestStatistics,
    RequestTally,
)
from engine.telemetry.records import read_records


def _event(error_class: str | None = None, **extra: object) -> dict[str, object]:
    return {"kind": "generation", "latency": 0.1, "prompt_tokens": 3, "completion_tokens": 2,
            "error_class": error_class, **extra}  # fmt: skip


def test_cancelled_attempts_are_counted_apart_from_errors() -> None:
    """An attempt the engine cancelled itself is a request, not an endpoint error: it does not
    raise the error rate; real failures count by class."""
    tally = RequestTally()
    for cls in (None, None, "rate_limit", "server", "cancelled", "cancelled"):
        tally.record(_event(cls))
    out = tally.statistics().metrics()
    assert out["requests/total"] == 6
    assert out["requests/errors"] == 2
    assert out["requests/error_rate"] == 2 / 6
    assert out["requests/cancelled"] == 2
    assert out["errors/rate_limit"] == 1 and out["errors/server"] == 1
    assert "errors/cancelled" not in out
    tally.reset()
    assert tally.statistics().metrics()["requests/total"] == 0  # the window was reset


def test_an_event_with_every_field_tallies_as_one_with_only_some() -> None:
    """A client's event (every field present) and an embedder's (only some) are counted by
    the same rules: absent fields count as zero or none."""
    full = {"kind": "judge", "prompt_tokens": 4, "completion_tokens": 2.0, "cost": None,
            "cost_usd": 0.5, "latency": 0.25, "error_class": "server"}  # fmt: skip
    partial = {"prompt_tokens": 4, "completion_tokens": 2, "cost_usd": 0.5, "latency": 0.25,
               "error_class": "server", "kind": "judge"}  # fmt: skip
    a, b = RequestTally(), RequestTally()
    a.record(full)
    b.record(partial)
    assert a.statistics() == b.statistics()
    c = RequestTally()
    c.record({"latency": 1})  # nothing else: a generation, no tokens, no error
    out = c.statistics().metrics()
    assert out["requests/generation"] == 1 and out["tokens/prompt"] == 0
    assert out["requests/errors"] == 0 and out["latency/p50"] == 1.0


def test_merge_adds_every_count() -> None:
    """Merging a tally adds every count, by kind and by error class too."""
    a, b = RequestTally(), RequestTally()
    a.record(_event("cancelled", kind="judge"))
    b.record(_event("timeout"))
    b.record(_event())
    a.merge(b)
    out = a.statistics().metrics()
    assert (out["requests/total"], out["requests/errors"], out["requests/cancelled"]) == (3, 1, 1)
    assert out["requests/judge"] == 1 and out["requests/generation"] == 2
    assert out["tokens/prompt"] == 9 and out["errors/timeout"] == 1


def test_statistics_are_a_frozen_snapshot() -> None:
    """statistics() does not change when more events arrive, and cannot be changed."""
    tally = RequestTally()
    tally.record(_event(latency=0.3))
    first = tally.statistics()
    tally.record(_event("server"))
    assert first.requests == 1 and first.errors == 0 and first.latency_p50 == 0.3
    assert tally.statistics().requests == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.requests = 5  # type: ignore[misc]
    assert RequestStatistics().metrics()["latency/p99"] == 0.0


def test_step_metrics_report_each_step_once() -> None:
    """A step's metrics cover its groups, earlier unreported steps and requests of no step;
    later steps wait for their own report."""
    events = EventLog(None)
    events.emit(**_event(), group_id="0-1")
    events.emit(**_event(), step=1)
    events.emit(**_event(kind="judge"))
    events.emit(**_event(), group_id="2-0")
    assert events.statistics().requests == 4
    first = events.step_metrics(1)
    assert first["requests/total"] == 3 and first["requests/judge"] == 1
    assert events.statistics().requests == 1
    assert events.step_metrics(2)["requests/total"] == 1
    assert events.step_metrics(3)["requests/total"] == 0
    assert events.count == 4


def test_event_log_writes_whole_lines(tmp_path: Path) -> None:
    """Events and log lines reach the file on flush; a timestamp is added."""
    path = tmp_path / "events.jsonl"
    events = EventLog(path, flush_every=2)
    events.emit(kind="generation", status=200)
    assert not path.exists()  # buffered, and the file is only created when written
    events.log(event="hello")
    events.emit(kind="judge", status=429)  # the second event fills the buffer
    records = list(read_records(path))
    assert [r["kind"] for r in records] == ["generation", "log", "judge"]
    assert all("ts" in r for r in records if r["kind"] != "log")
    events.close()


def test_metrics_log_appends_one_line_per_step(tmp_path: Path) -> None:
    """Each write is one line, readable at once; NaN is written as null."""
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsLog(path)
    metrics.write({"step": 0, "reward": float("nan")})
    metrics.write({"step": 1, "reward": 0.5})
    assert list(read_records(path)) == [{"step": 0, "reward": None}, {"step": 1, "reward": 0.5}]
    metrics.close()


def test_latency_memory_is_bounded_when_step_metrics_is_never_called() -> None:
    """An embedder whose group ids encode no step never resets the window: over 100k events
    the latencies kept stay at LATENCY_SAMPLE, and the quantiles still follow the window's."""
    log = EventLog(None)
    total = 100_000
    for i in range(total):
        # latencies 0, 1/total, ... in a scrambled order: the window's p50 is 0.5
        log.emit(kind="generation", group_id="g", status=200, latency=(i * 7919 % total) / total)
    tally = log._unstepped
    assert tally.latencies.seen == total
    assert len(tally.latencies.values) == LATENCY_SAMPLE
    stats = log.statistics()
    assert stats.requests == total
    assert abs(stats.latency_p50 - 0.5) < 0.02
    assert abs(stats.latency_p99 - 0.99) < 0.01
    assert len(log._unstepped.latencies.values) == LATENCY_SAMPLE  # statistics() kept it bounded


def test_latency_sample_keeps_every_value_below_its_capacity() -> None:
    """Below capacity the sample is exact, merged too; past it, a merge keeps capacity values
    drawn from each side in proportion to what it saw."""
    a, b = LatencySample(capacity=10), LatencySample(capacity=10)
    for x in range(4):
        a.add(float(x))
        b.add(float(10 + x))
    a.merge(b)
    assert sorted(a.values) == [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0] and a.seen == 8
    big = LatencySample(capacity=10)
    for _ in range(90):
        big.add(100.0)
    a.merge(big)
    assert len(a.values) == 10 and a.seen == 98
    assert a.values.count(100.0) == 9  # 90 of the 98 seen
    with pytest.raises(ValueError, match="capacity"):
        LatencySample(capacity=0)


def test_emit_event_counts_like_emit(tmp_path: Path) -> None:
    """emit_event (a dict the log takes over) writes and counts what emit writes."""
    log = EventLog(tmp_path / "events.jsonl")
    log.emit(kind="judge", status=200, latency=0.1, prompt_tokens=2)
    log.emit_event({"kind": "judge", "status": 200, "latency": 0.1, "prompt_tokens": 2})
    log.close()
    first, second = read_records(tmp_path / "events.jsonl")
    assert set(first) == set(second) and "ts" in second
    assert {k: v for k, v in first.items() if k != "ts"} == {
        k: v for k, v in second.items() if k != "ts"
    }
    assert log.statistics().prompt_tokens == 4
