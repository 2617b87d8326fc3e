"""The limiter actor's state (:class:`~engine.cluster.limiter.SharedBuckets`) on one event
loop, without Ray: leases come from the client's own buckets and 429 gate."""

from __future__ import annotations

import asyncio
import time

from engine.cluster.limiter import SharedBuckets
from engine.config.sections import LimitsConfig


async def test_leases_are_bounded_by_the_buckets_and_returned_permits_come_back() -> None:
    buckets = SharedBuckets(LimitsConfig(rpm=600, tpm=6000, burst_seconds=1.0))
    first = await buckets.lease(2, 20, 10.0)  # the burst holds 10 requests, 100 tokens
    assert first.requests == 10 and first.tokens == 100.0
    t0 = time.monotonic()
    second = await buckets.lease(1, 4, 10.0)  # empty: waits for one request's refill
    waited = time.monotonic() - t0
    assert second.requests >= 1
    assert 0.05 <= waited < 1.0
    buckets.give_back(10, 100.0)  # returned permits can be leased again at once
    t1 = time.monotonic()
    third = await buckets.lease(5, 5, 10.0)
    assert third.requests == 5 and time.monotonic() - t1 < 0.05
    stats = buckets.statistics()
    assert stats["granted"] == first.requests + second.requests + 5
    assert stats["returned"] == 10


async def test_an_underestimate_is_charged_and_a_refund_given_back() -> None:
    buckets = SharedBuckets(LimitsConfig(rpm=6000, tpm=600, burst_seconds=1.0))
    await buckets.lease(1, 1, 10.0)  # 10 tokens reserved of 10
    buckets.charge(5.0)  # used 15: 5 tokens of debt
    assert buckets.statistics()["tokens_level"] < 0
    buckets.charge(-5.0)  # a refund puts them back
    assert -0.5 < buckets.statistics()["tokens_level"] <= 0.5


async def test_a_429_closes_the_gate_for_every_lease_and_wakes_the_watchers() -> None:
    buckets = SharedBuckets(LimitsConfig(rpm=6000, burst_seconds=1.0))
    watcher = asyncio.ensure_future(buckets.watch(0, poll=5.0))
    await asyncio.sleep(0)
    assert buckets.rate_limited_for(0.3) > 0.25
    epoch, pause = await asyncio.wait_for(watcher, 1.0)
    assert epoch == 1 and 0.2 < pause <= 0.3
    assert buckets.rate_limited_for(0.1) > 0.1  # an earlier deadline never shortens it
    assert buckets.statistics()["epoch"] == 1
    t0 = time.monotonic()
    await buckets.lease(1, 1, 0.0)  # no lease while the gate is closed
    assert time.monotonic() - t0 >= 0.2
    assert buckets.statistics()["rate_limited"] == 2
