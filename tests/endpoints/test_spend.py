"""engine.endpoints.spend: reported costs checked, the price table, the meter and its budget,
and the client against the simulated server (reported cost, priced cost, refusal)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from engine.config.sections import EndpointConfig, ModelPrice, RetryConfig
from engine.endpoints.client import Client
from engine.endpoints.parsing import parse_usage
from engine.endpoints.spend import (
    BUILTIN_PRICES,
    BUILTIN_PRICES_DATE,
    PriceTable,
    SpendMeter,
    Threshold,
    reported_cost,
)
from engine.errors import BudgetSpent
from engine.telemetry.events import EventLog
from engine.telemetry.records import read_records
from engine.testing.sim import SimConfig, SimServer
from engine.types import Usage

# ----------------------------------------------------------------------------- reported cost


@pytest.mark.parametrize("value", [0, 0.0, 1, 0.00042, 12.5])
def test_a_finite_non_negative_cost_is_trusted(value: float) -> None:
    assert reported_cost(value) == float(value)


@pytest.mark.parametrize(
    "value", [-0.01, -1, math.nan, math.inf, -math.inf, "0.01", True, False, [0.1], {"usd": 1}]
)
def test_an_invalid_cost_is_not_trusted(value: object) -> None:
    assert reported_cost(value) is None


def test_parse_usage_keeps_absent_apart_from_zero() -> None:
    """No cost is None (priced by the table); a reported 0 is a real 0; a bad one is None."""
    u = {"prompt_tokens": 3, "completion_tokens": 1}
    assert parse_usage(u).cost is None  # type: ignore[union-attr]
    assert parse_usage({**u, "cost": 0}).cost == 0.0  # type: ignore[union-attr]
    assert parse_usage({**u, "cost": -5}).cost is None  # type: ignore[union-attr]
    assert parse_usage({**u, "cost": 0.25}).cost == 0.25  # type: ignore[union-attr]
    assert parse_usage({"cost": 0.25}) is None  # no token counts: untrusted as a whole


def test_usages_add_their_costs() -> None:
    assert (Usage(1, 1) + Usage(1, 1)).cost is None
    assert (Usage(1, 1, cost=0.5) + Usage(1, 1)).cost == 0.5
    assert (Usage(cost=0.5) + Usage(cost=0.25)).cost == 0.75


# ----------------------------------------------------------------------------- price table


def test_price_table_config_over_builtin_and_vendor_prefix() -> None:
    table = PriceTable({"gpt-4o-mini": ModelPrice(1.0, 2.0), "my-model": ModelPrice(0.15, 0.6)})
    assert table.price("gpt-4o-mini", hosted=True) == ModelPrice(1.0, 2.0)  # config wins
    assert table.price("openai/gpt-4.1-mini", hosted=True) == BUILTIN_PRICES["gpt-4.1-mini"]
    assert table.cost("my-model", Usage(1000, 500), hosted=False) == pytest.approx(0.00045)


def test_builtin_prices_apply_to_hosted_providers_only() -> None:
    """A local server (llama.cpp, vLLM) costs 0 unless the config prices its model."""
    table = PriceTable()
    assert table.price("gpt-4o-mini", hosted=False) is None
    assert table.cost("gpt-4o-mini", Usage(10**6, 10**6), hosted=True) == pytest.approx(0.75)
    assert table.price("gemma-3-270m", hosted=True) is None


def test_builtin_table_is_dated_and_sane() -> None:
    assert BUILTIN_PRICES_DATE.count("-") == 2
    for name, p in BUILTIN_PRICES.items():
        assert 0 < p.input <= p.output <= 100, name


# ----------------------------------------------------------------------------- the meter


def test_meter_prefers_the_reported_cost_then_the_price_then_zero() -> None:
    meter = SpendMeter(PriceTable({"m": ModelPrice(2.0, 4.0)}))
    assert meter.cost(Usage(10, 10, cost=0.5), "m", hosted=False) == (0.5, "reported")
    assert meter.cost(Usage(10**6, 0), "m", hosted=False) == (2.0, "price")
    assert meter.cost(Usage(10**6, 10**6), "local-model", hosted=False) == (0.0, "none")
    assert meter.requests == 3 and meter.reported == 1


def test_thresholds_fire_once_each_and_the_budget_refuses() -> None:
    seen: list[Threshold] = []
    meter = SpendMeter(budget=1.0, on_threshold=seen.append)
    for _ in range(3):
        meter.admit()
        meter.finish(0.3)  # 0.3, 0.6, 0.9
    assert [t.percent for t in seen] == [50, 80]
    assert not meter.exhausted
    meter.admit()
    meter.admit()  # two in flight at the cap
    meter.finish(0.2)  # 1.1: spent
    assert meter.exhausted and [t.percent for t in seen] == [50, 80, 100]
    with pytest.raises(BudgetSpent) as info:
        meter.admit()
    assert info.value.error_class == "budget" and not info.value.retryable
    meter.finish(0.05)  # the other in-flight request still counts
    assert meter.spent == pytest.approx(1.15) and meter.in_flight == 0
    assert [t.percent for t in seen] == [50, 80, 100]  # no second warning
    assert "spend budget spent" in seen[-1].line() and "80%" in seen[1].line()


def test_restore_keeps_passed_thresholds_quiet() -> None:
    seen: list[Threshold] = []
    meter = SpendMeter(budget=1.0, spent=0.6, on_threshold=seen.append)
    meter.charge(0.25)
    assert [t.percent for t in seen] == [80]
    with pytest.raises(ValueError):
        meter.restore(math.nan)


async def test_drained_waits_for_the_requests_in_flight() -> None:
    meter = SpendMeter(budget=1.0)
    await meter.drained()  # nothing in flight: at once
    meter.admit()
    waiter = asyncio.ensure_future(meter.drained())
    await asyncio.sleep(0)
    assert not waiter.done()
    meter.finish(2.0)
    await asyncio.wait_for(waiter, 5)
    assert meter.exhausted


# ----------------------------------------------------------------------------- the client


async def test_client_events_carry_reported_and_priced_costs(tmp_path: Path) -> None:
    """Against the sim: usage.cost when reported, tokens at the price when not, or when the
    reported figure is negative (an anomaly); the meter's total is the events' sum."""
    path = tmp_path / "events.jsonl"
    events = EventLog(path, flush_every=1)
    meter = SpendMeter(PriceTable({"sim-model": ModelPrice(1.0, 3.0)}))
    async with SimServer(SimConfig(usage_cost=1e-6)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8)
        async with Client(endpoint, events=events, spend=meter) as client:
            await client.complete("hello there", n=2)
            sim.reconfigure(usage_cost=None)
            await client.complete("hello there", n=1)
            sim.reconfigure(usage_cost=-1e-6)
            await client.complete("hello there", n=1)
    events.close()
    evs = [e for e in read_records(path) if e.get("kind") == "generation"]
    assert [e["cost_source"] for e in evs] == ["reported", "price", "price"]
    first = evs[0]
    tokens = first["prompt_tokens"] + first["completion_tokens"]
    assert first["cost_usd"] == pytest.approx(1e-6 * tokens)
    for e in evs[1:]:
        want = (e["prompt_tokens"] * 1.0 + e["completion_tokens"] * 3.0) / 1e6
        assert e["cost_usd"] == pytest.approx(want) and want > 0
    assert meter.spent == pytest.approx(sum(e["cost_usd"] for e in evs))


async def test_a_spent_budget_refuses_before_sending(tmp_path: Path) -> None:
    """Once spent, a request is refused without reaching the server (its event says so)."""
    path = tmp_path / "events.jsonl"
    events = EventLog(path, flush_every=1)
    meter = SpendMeter(PriceTable({"sim-model": ModelPrice(1e5, 1e5)}), budget=0.01)
    async with SimServer(SimConfig()) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8)
        async with Client(
            endpoint, events=events, spend=meter, retry=RetryConfig(max_attempts=3)
        ) as client:
            await client.complete("hello", n=1)  # admitted under the budget, spends past it
            assert meter.exhausted
            sent = sim.statistics().requests
            with pytest.raises(BudgetSpent):
                await client.complete("hello again", n=1)
            assert sim.statistics().requests == sent  # never sent, never retried
    events.close()
    evs = [e for e in read_records(path) if e.get("kind") == "generation"]
    assert [e.get("error_class") for e in evs] == [None, "budget"]
    assert evs[1]["cost_usd"] == 0.0 and evs[1]["attempt"] == 1


def test_invalid_costs_are_logged_sparingly(monkeypatch: pytest.MonkeyPatch) -> None:
    """An anomaly is logged with its count at the 1st, 10th, 100th... occurrence."""
    from structlog.testing import capture_logs

    import engine.endpoints.spend as spend

    monkeypatch.setattr(spend, "_INVALID", [0])
    with capture_logs() as logs:
        for _ in range(120):
            assert reported_cost(-1.0) is None
        assert reported_cost(0.5) == 0.5
    found = [r for r in logs if r["event"] == "endpoint.cost_invalid"]
    assert [r["count"] for r in found] == [1, 10, 100]
    assert all(r["log_level"] == "warning" and r["value_type"] == "float" for r in found)
