"""Request events carry the attempt's queue wait for a limiter permit, and the event log
counts attempts in flight while they are on the wire (against the simulated server)."""

from __future__ import annotations

import asyncio

from engine.config.sections import EndpointConfig, LimitsConfig
from engine.endpoints.client import Client
from engine.telemetry.events import EventLog
from engine.testing.sim import SimConfig, SimServer

LATENCY = 0.3


async def test_queue_wait_and_in_flight() -> None:
    """One concurrency slot, two requests: the second waits at least most of the first's
    time on the wire (a lower bound: load only lengthens it); at most one is in flight."""
    events = EventLog()
    seen: list[dict[str, object]] = []
    events.subscribe(seen.append)
    async with SimServer(SimConfig(latency=LATENCY)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=4)
        async with Client(endpoint, limits=LimitsConfig(max_concurrency=1), events=events) as c:
            calls = [asyncio.create_task(c.complete("hi", group_id=f"0-{j}")) for j in range(2)]
            peak = 0
            while not all(t.done() for t in calls):
                peak = max(peak, events.in_flight["generation"])
                await asyncio.sleep(0.01)
            await asyncio.gather(*calls)
    assert peak == 1 and events.in_flight["generation"] == 0
    assert len(seen) == 2
    first, second = sorted(seen, key=lambda e: float(e["queue_wait"]))  # type: ignore[arg-type]
    assert 0 <= float(first["queue_wait"]) < LATENCY  # type: ignore[arg-type]
    assert float(second["latency"]) >= LATENCY * 0.9  # type: ignore[arg-type]
    assert float(second["queue_wait"]) >= LATENCY * 0.6  # type: ignore[arg-type]
