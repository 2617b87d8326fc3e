"""The simulated server's injected faults."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from engine.testing import (
    FAULT_KINDS,
    Faults,
    SimConfig,
    SimServer,
)
from tests.testing.sim_http import CHAT, COMPLETION, parse_duration, post, serving


async def test_fault_rate_limit_has_parseable_retry_headers() -> None:
    """A rate_limit fault is a 429 with retry-after, retry-after-ms and reset headers."""
    async with serving(SimConfig(faults=Faults(rate_limit=1.0, retry_after=0.25))) as (sim, s):
        status, headers, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["rate_limit"] == 1
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["retry-after"]) == 1  # whole seconds, rounded up
    assert int(headers["retry-after-ms"]) == 250
    assert parse_duration(headers["x-ratelimit-reset-requests"]) == 0.25
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_fault_rate_limit_bare_has_no_headers() -> None:
    """A rate_limit_bare fault is a 429 without any retry or rate-limit header."""
    async with serving(SimConfig(faults=Faults(rate_limit_bare=1.0))) as (sim, s):
        status, headers, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["rate_limit_bare"] == 1
    assert status == 429
    assert not [h for h in headers if h.lower().startswith(("retry-after", "x-ratelimit"))]


async def test_fault_rate_limit_junk_headers() -> None:
    """A rate_limit_junk fault is a 429 whose retry headers are junk."""
    async with serving(SimConfig(faults=Faults(rate_limit_junk=1.0))) as (sim, s):
        status, headers, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["rate_limit_junk"] == 1
    assert status == 429
    assert headers["retry-after"] == "-1"
    assert headers["x-ratelimit-reset-requests"] == "-1"


async def test_fault_server_error_cycles_500_502_503() -> None:
    """server_error faults answer 500, 502 (an HTML page) and 503 in turn."""
    async with serving(SimConfig(faults=Faults(server_error=1.0))) as (sim, s):
        results = [await post(s, f"{sim.base_url}/chat/completions", CHAT) for _ in range(3)]
        assert sim.counters.faults["server_error"] == 3
        assert sim.counters.by_status == {500: 1, 502: 1, 503: 1}
    assert [r[0] for r in results] == [500, 502, 503]
    assert results[1][1]["Content-Type"].startswith("text/html")
    assert results[0][2]["error"]["type"] == "server_error"


async def test_fault_overloaded_is_529() -> None:
    """An overloaded fault is a 529 with an overloaded_error body."""
    async with serving(SimConfig(faults=Faults(overloaded=1.0))) as (sim, s):
        status, _, body = await post(s, f"{sim.base_url}/completions", COMPLETION)
        assert sim.counters.faults["overloaded"] == 1
    assert status == 529
    assert body["error"]["type"] == "overloaded_error"


async def test_fault_reset_disconnects() -> None:
    """A reset fault closes the connection with no response: ServerDisconnectedError."""
    async with serving(SimConfig(faults=Faults(reset=1.0))) as (sim, s):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["reset"] == 1
        assert sim.counters.by_status == {}


async def test_reset_on_reused_connection() -> None:
    """After a good request, a reset on the reused keep-alive connection is a disconnect."""
    connector = aiohttp.TCPConnector(limit=1)
    async with SimServer() as sim, aiohttp.ClientSession(connector=connector) as s:
        assert (await post(s, f"{sim.base_url}/chat/completions", CHAT))[0] == 200
        sim.set_faults(reset=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.connections == 1  # the failing request reused the first connection


async def test_fault_timeout_hangs_past_client_timeout() -> None:
    """A timeout fault hangs; the client times out and the server counts the abandoned request."""
    async with serving(SimConfig(faults=Faults(timeout=1.0, hang_seconds=30))) as (sim, s):
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(
                f"{sim.base_url}/chat/completions",
                json=CHAT,
                timeout=aiohttp.ClientTimeout(total=0.05),
            ) as resp:
                await resp.read()
        assert sim.counters.faults["timeout"] == 1
        for _ in range(100):
            if sim.counters.cancelled:
                break
            await asyncio.sleep(0.01)
        assert sim.counters.cancelled == 1
        assert sim.counters.in_flight == 0


async def test_fault_timeout_then_answers() -> None:
    """With a short hang_seconds, a timeout fault answers normally after the hang."""
    async with serving(SimConfig(faults=Faults(timeout=1.0, hang_seconds=0.05))) as (sim, s):
        t0 = asyncio.get_running_loop().time()
        status, _, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert asyncio.get_running_loop().time() - t0 >= 0.05
    assert status == 200


async def test_fault_malformed_is_invalid_json() -> None:
    """A malformed fault is a 200 application/json whose body does not parse."""
    async with serving(SimConfig(faults=Faults(malformed=1.0))) as (sim, s):
        status, headers, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["malformed"] == 1
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert isinstance(body, bytes)


async def test_fault_truncated_alternates_partial_json_and_short_body() -> None:
    """truncated faults give partial JSON, then a body shorter than its Content-Length."""
    async with serving(SimConfig(faults=Faults(truncated=1.0))) as (sim, s):
        status, _, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert status == 200 and isinstance(body, bytes) and body.startswith(b'{"id"')
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.counters.faults["truncated"] == 2


async def test_fault_error_200_alternates_error_body_and_error_choices() -> None:
    """error_200 faults give a 200 error body, then choices with finish_reason error."""
    async with serving(SimConfig(faults=Faults(error_200=1.0))) as (sim, s):
        s1, _, first = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 2})
        s2, _, second = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 2})
        assert sim.counters.faults["error_200"] == 2
    assert s1 == s2 == 200
    assert "choices" not in first and first["error"]["message"]
    assert [c["finish_reason"] for c in second["choices"]] == ["error", "error"]
    assert all(c["message"]["content"] == "" and c["error"] for c in second["choices"])


async def test_fault_short_n() -> None:
    """short_n returns n // 2 choices."""
    async with serving(SimConfig(faults=Faults(short_n=1.0))) as (sim, s):
        _, _, four = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 4})
        _, _, one = await post(s, f"{sim.base_url}/completions", COMPLETION)
        assert sim.counters.faults["short_n"] == 2
    assert len(four["choices"]) == 2
    assert one["choices"] == []


async def test_every_fault_kind_is_counted() -> None:
    """Each fault kind at rate 1.0 is injected and counted under its name."""
    for kind in FAULT_KINDS:
        faults = Faults(**{kind: 1.0}, hang_seconds=0.0)
        async with serving(SimConfig(faults=faults)) as (sim, s):
            with contextlib.suppress(aiohttp.ClientError):
                await post(s, f"{sim.base_url}/chat/completions", CHAT)
            assert sim.counters.faults == {kind: 1}, kind


async def test_fault_mix_is_seeded() -> None:
    """A fault mix is drawn from the seeded RNG: same seed, same sequence of statuses."""
    faults = Faults(server_error=0.3, rate_limit_bare=0.2)

    async def statuses() -> list[int]:
        async with serving(SimConfig(seed=9, faults=faults)) as (sim, s):
            return [
                (await post(s, f"{sim.base_url}/completions", COMPLETION))[0] for _ in range(60)
            ]

    a, b = await statuses(), await statuses()
    assert a == b
    assert 10 < a.count(200) < 50
    assert 429 in a and 500 in a


def test_fault_rates_are_validated() -> None:
    """Rates outside [0, 1] or summing past 1 are rejected."""
    with pytest.raises(ValueError, match="sum"):
        Faults(reset=0.6, timeout=0.5)
    with pytest.raises(ValueError):
        Faults(malformed=-0.1)
    assert Faults.spread(0.5).total == pytest.approx(0.5)
    assert Faults.spread(0.5).timeout == 0.0
