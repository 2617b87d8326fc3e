"""The simulated server's enforced rate limits."""

from __future__ import annotations

from engine.testing import (
    SimConfig,
)
from tests.testing.sim_http import CHAT, COMPLETION, Clock, parse_duration, post, serving


async def test_rpm_enforced_with_parseable_headers() -> None:
    """Past the RPM the server answers 429 with consistent retry-after and reset headers."""
    clock = Clock()
    async with serving(SimConfig(rpm=3), clock=clock) as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        ok = [await post(s, url, CHAT) for _ in range(3)]
        assert [r[0] for r in ok] == [200, 200, 200]
        assert [r[1]["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
        assert ok[2][1]["x-ratelimit-limit-requests"] == "3"
        status, headers, body = await post(s, url, CHAT)
        assert status == 429
        assert body["error"]["type"] == "requests"
        assert int(headers["retry-after-ms"]) == 20_000  # one request refills in 60/3 s
        assert int(headers["retry-after"]) == 20
        assert parse_duration(headers["x-ratelimit-reset-requests"]) == 60.0
        assert headers["x-ratelimit-reset-requests"] == "1m0s"
        assert sim.counters.rate_limited == 1
        clock.now += 19.9
        assert (await post(s, url, CHAT))[0] == 429
        clock.now += 0.1
        assert (await post(s, url, CHAT))[0] == 200
        assert sim.statistics().too_many_requests == 2


async def test_burst_seconds_shrinks_the_bucket() -> None:
    """With burst_seconds=1 only a second's worth of requests may arrive at once."""
    async with serving(SimConfig(rpm=120, burst_seconds=1), clock=Clock()) as (sim, s):
        statuses = [(await post(s, f"{sim.base_url}/completions", COMPLETION))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_tpm_enforced_on_estimate() -> None:
    """TPM charges len(prompt)//4+1 plus n*max_tokens at admission; too large is refused."""
    clock = Clock()
    async with serving(SimConfig(tpm=100), clock=clock) as (sim, s):
        url = f"{sim.base_url}/completions"
        body = {"model": "m", "prompt": "abcdefg", "max_tokens": 20, "n": 2}  # 2 + 40 tokens
        first, second, third = [await post(s, url, body) for _ in range(3)]
        assert (first[0], second[0], third[0]) == (200, 200, 429)
        assert first[1]["x-ratelimit-remaining-tokens"] == "58"
        assert third[2]["error"]["type"] == "tokens"
        # 42 tokens needed, 16 left, refilled at 100/60 per second -> 15.6 s
        assert int(third[1]["retry-after-ms"]) == 15_600
        huge = await post(s, url, {**body, "max_tokens": 100})
        assert huge[0] == 429
        assert "retry-after" not in huge[1]
        assert "too large" in huge[2]["error"]["message"]


async def test_rate_headers_can_be_switched_off() -> None:
    """rate_headers=False drops x-ratelimit-* from successful responses."""
    async with serving(SimConfig(rpm=100, rate_headers=False)) as (sim, s):
        _, headers, _ = await post(s, f"{sim.base_url}/completions", COMPLETION)
    assert not [h for h in headers if h.lower().startswith("x-ratelimit")]
