"""The simulated server: endpoints, latency, concurrency, statistics, live changes."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import engine.testing
from engine.testing import (
    SimConfig,
    SimRequest,
)
from tests.testing.sim_http import CHAT, COMPLETION, post, serving


async def test_models_and_health() -> None:
    """GET /v1/models lists the configured names; GET /health answers ok."""
    async with serving(SimConfig(models=("a", "b"))) as (sim, s):
        async with s.get(f"{sim.base_url}/models") as resp:
            models = await resp.json()
        async with s.get(sim.base_url.removesuffix("/v1") + "/health") as resp:
            assert resp.status == 200
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["a", "b"]


async def test_custom_model_and_its_failure() -> None:
    """SimConfig.model supplies the text; if it raises, the server answers 500 and counts it."""

    def model(req: SimRequest) -> str:
        if "boom" in req.prompt:
            raise RuntimeError("boom")
        return f"echo {req.index} {req.prompt}"

    async with serving(SimConfig(model=model)) as (sim, s):
        _, _, ok = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "n": 2})
        status, _, err = await post(
            s, f"{sim.base_url}/completions", {"model": "m", "prompt": "boom"}
        )
        assert sim.counters.model_errors == 1
    assert [c["text"] for c in ok["choices"]] == [
        "echo 0 Once upon a time",
        "echo 1 Once upon a time",
    ]
    assert status == 500
    assert err["error"]["type"] == "server_error"


async def test_latency_and_served_concurrency_cap() -> None:
    """With a cap of 2 served at once, 6 requests of 20 ms take at least 3 rounds."""
    cfg = SimConfig(latency=0.02, max_concurrency_served=2)
    async with serving(cfg) as (sim, s):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(
            *(post(s, f"{sim.base_url}/completions", COMPLETION) for _ in range(6))
        )
        elapsed = loop.time() - t0
        stats = sim.statistics()
    assert all(r[0] == 200 for r in results)
    assert elapsed >= 0.06
    assert stats.max_in_flight == 6
    assert stats.max_queued >= 3
    assert stats.in_flight == stats.queued == 0
    assert stats.busy_seconds >= 0.06
    assert stats.concurrency_seconds > stats.busy_seconds
    assert 0 < stats.utilization <= 1


async def test_stats_endpoint_and_counts() -> None:
    """GET /sim/stats reports requests by endpoint and status, tokens and choices."""
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 3})
        await post(s, f"{sim.base_url}/completions", {"model": "m"})
        async with s.get(sim.base_url.removesuffix("/v1") + "/sim/stats") as resp:
            stats = await resp.json()
    assert stats["requests"] == 2
    assert stats["by_endpoint"] == {"/v1/chat/completions": 1, "/v1/completions": 1}
    assert stats["by_status"] == {"200": 1, "400": 1}
    assert stats["choices"] == 3
    assert stats["completion_tokens"] == out["usage"]["completion_tokens"]
    assert stats["connections"] == 1


async def test_idle_keepalive_connections_are_closed() -> None:
    """An idle connection is closed after keepalive_timeout, so the next request reconnects."""
    async with serving(SimConfig(keepalive_timeout=0.1)) as (sim, s):
        url = f"{sim.base_url}/completions"
        await post(s, url, COMPLETION)
        await post(s, url, COMPLETION)
        assert sim.counters.connections == 1
        await asyncio.sleep(0.3)
        assert (await post(s, url, COMPLETION))[0] == 200
        assert sim.counters.connections == 2


async def test_reconfigure_while_serving() -> None:
    """reconfigure changes behaviour live: here n stops being honoured."""
    async with serving() as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        assert len((await post(s, url, {**CHAT, "n": 3}))[2]["choices"]) == 3
        sim.reconfigure(honor_n=False)
        assert len((await post(s, url, {**CHAT, "n": 3}))[2]["choices"]) == 1


def test_public_names_resolve() -> None:
    """Every name in engine.testing.__all__ resolves."""
    for name in engine.testing.__all__:
        assert getattr(engine.testing, name) is not None


async def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() is frozen and keeps its counts while the live counters move on."""
    async with serving() as (sim, s):
        await post(s, f"{sim.base_url}/completions", COMPLETION)
        snapshot = sim.statistics()
        await post(s, f"{sim.base_url}/completions", COMPLETION)
        assert (snapshot.requests, sim.counters.requests) == (1, 2)
        assert snapshot.by_status[200] == 1 and sim.counters.by_status[200] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.requests = 5  # type: ignore[misc]
