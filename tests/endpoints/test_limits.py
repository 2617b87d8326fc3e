"""Client-side limits: RPM pacing, TPM reserve/settle, the 429 gate, concurrency, AIMD, close.

Every test runs on a virtual-time event loop (``tests/virtual_time.py``): waits of minutes
take no real time, and admission times are asserted exactly. Tests of minute-long buckets set
``burst_seconds=60`` (the default holds one second of rate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from engine.config.loading import load_config
from engine.config.sections import LimitsConfig
from engine.endpoints.budget import TokenBudget
from engine.endpoints.limits import Limiter, LimiterStatistics, Permit
from engine.errors import ClientClosedError, ConfigError
from tests.virtual_time import VirtualTimeDeadlock, VirtualTimeLoop, sleep_until, virtual_time


def _now() -> float:
    return asyncio.get_running_loop().time()


class _Recorder:
    """Starts permit acquisitions as tasks and records when (relative to t0) each got in."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.t0 = _now()
        self.admitted: dict[str, float] = {}  # name -> seconds after t0
        self.order: list[str] = []

    def start(self, name: str, est_tokens: int = 0, *, hold: float = 0.0) -> asyncio.Task[None]:
        async def run() -> None:
            async with self.limiter.permit(est_tokens):
                self.admitted[name] = _now() - self.t0
                self.order.append(name)
                if hold:
                    await asyncio.sleep(hold)

        return asyncio.create_task(run(), name=name)


# ----------------------------------------------------------------------------- virtual time


def test_virtual_loop_sleeps_without_real_time() -> None:
    """An hour of asyncio.sleep on the virtual loop takes an hour of loop time and no real time."""

    @virtual_time
    async def main() -> float:
        t0 = _now()
        await asyncio.sleep(3600)
        return _now() - t0

    real0 = time.monotonic()
    assert main() == pytest.approx(3600)
    assert time.monotonic() - real0 < 60.0  # not the hour: holds on a loaded machine too


def test_virtual_loop_reports_a_deadlock_instead_of_hanging() -> None:
    """Waiting on something nothing will ever resolve raises VirtualTimeDeadlock."""

    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with (
        asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(idle_timeout=0)) as runner,
        pytest.raises(VirtualTimeDeadlock),
    ):
        runner.run(main())


# ----------------------------------------------------------------------------- RPM


@virtual_time
async def test_rpm_allows_a_burst_then_paces_one_request_per_interval() -> None:
    """With rpm=60, 60 requests go at once and each one after waits one more second."""
    rec = _Recorder(Limiter(LimitsConfig(burst_seconds=60.0, rpm=60, max_concurrency=1000)))
    await asyncio.gather(*(rec.start(f"r{i}") for i in range(70)))
    times = [rec.admitted[f"r{i}"] for i in range(70)]
    assert times[:60] == [0.0] * 60
    assert times[60:] == pytest.approx([float(k) for k in range(1, 11)])


@virtual_time
async def test_a_short_burst_window_paces_from_the_start() -> None:
    """burst_seconds=0.5 at rpm=480: 4 requests go at once (half a second of rate), then one
    every 0.125 s (binary-exact figures: aiolimiter's float arithmetic can otherwise leave a
    waiter 1e-16 s short, which virtual time would never advance past); the token budget
    holds its burst of tpm likewise."""
    rec = _Recorder(Limiter(LimitsConfig(rpm=480, burst_seconds=0.5, max_concurrency=1000)))
    await asyncio.gather(*(rec.start(f"r{i}") for i in range(20)))
    times = [rec.admitted[f"r{i}"] for i in range(20)]
    assert times[:4] == [0.0] * 4
    assert times[4:] == pytest.approx([0.125 * k for k in range(1, 17)])

    rec = _Recorder(Limiter(LimitsConfig(tpm=6000, burst_seconds=1.0)))  # 100 tokens/s, 100 held
    await asyncio.gather(*(rec.start(f"t{i}", 50) for i in range(4)))
    assert [rec.admitted[f"t{i}"] for i in range(4)] == pytest.approx([0.0, 0.0, 0.5, 1.0])


def test_burst_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="burst_seconds"):
        TokenBudget(600, burst_seconds=0.0)
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(None, ["limits.burst_seconds=0"])


@virtual_time
async def test_rpm_counts_a_fan_out_as_several_requests_even_beyond_the_rate() -> None:
    """A permit for 25 requests at rpm=10 is paced as 25 requests (90 s), and does not fail."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, rpm=10))
    t0 = _now()
    async with limiter.permit(requests=25) as permit:
        waited = _now() - t0
    assert waited == pytest.approx(90.0)  # 10 at once, 10 more after 60 s, 5 more after 30 s
    assert permit.waited == pytest.approx(90.0)
    assert limiter.statistics().requests_admitted == 25


# ----------------------------------------------------------------------------- TPM


@virtual_time
async def test_tpm_refund_lets_a_waiting_request_in_earlier() -> None:
    """Settling a 600-token reservation at 100 used lets a 300-token waiter in at once."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))  # refills 10 tokens/s
    rec = _Recorder(limiter)
    async with limiter.permit(600) as big:
        waiter = rec.start("waiter", 300)
        await sleep_until(rec.t0 + 1.0)
        assert "waiter" not in rec.admitted
        big.settle(100)  # 500 back: level 10 + 500
        await waiter
    assert rec.admitted["waiter"] == pytest.approx(1.0)  # not 30 s


@virtual_time
async def test_tpm_without_settle_keeps_the_whole_reservation() -> None:
    """A permit that exits unsettled counts its estimate as used, so the next waits for refill."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))
    rec = _Recorder(limiter)
    async with limiter.permit(600):
        waiter = rec.start("waiter", 300)
        await sleep_until(rec.t0 + 1.0)
    await waiter
    assert rec.admitted["waiter"] == pytest.approx(30.0)


@virtual_time
async def test_tpm_without_refund_settle_keeps_the_reservation() -> None:
    """With tpm_refund off (servers that charge max_tokens up front), settling refunds nothing."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600, tpm_refund=False))
    rec = _Recorder(limiter)
    async with limiter.permit(600) as big:
        waiter = rec.start("waiter", 300)
        await sleep_until(rec.t0 + 1.0)
        big.settle(100)
        await waiter
    assert rec.admitted["waiter"] == pytest.approx(30.0)


@virtual_time
async def test_tpm_large_request_at_the_head_is_not_overtaken() -> None:
    """Small requests queued behind a large one wait for it; the large one runs first."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))  # 10 tokens/s
    async with limiter.permit(600):
        pass  # bucket now empty
    rec = _Recorder(limiter)
    tasks = [rec.start("big", 500)]
    await sleep_until(rec.t0 + 10.0)  # 100 tokens back: enough for a small one, not the big
    tasks += [rec.start(f"small{i}", 10) for i in range(3)]
    await asyncio.gather(*tasks)
    assert rec.order == ["big", "small0", "small1", "small2"]
    assert rec.admitted["big"] == pytest.approx(50.0)
    assert [rec.admitted[f"small{i}"] for i in range(3)] == pytest.approx([51.0, 52.0, 53.0])


@virtual_time
async def test_tpm_request_above_capacity_goes_into_debt_instead_of_failing() -> None:
    """A 1800-token request on a 600 TPM budget is admitted and later requests wait out the debt."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))
    rec = _Recorder(limiter)
    async with limiter.permit(1800):
        stats = limiter.statistics()
        assert (stats.tokens_available, stats.token_debt) == (0.0, 1200.0)
    await rec.start("next", 60)
    assert rec.admitted["next"] == pytest.approx(126.0)  # (1200 debt + 60) / 10 per s


@virtual_time
async def test_tpm_request_above_capacity_waits_for_a_full_bucket() -> None:
    """An over-capacity request arriving when the bucket is not full waits until it is full."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))
    async with limiter.permit(300):
        pass
    rec = _Recorder(limiter)
    await rec.start("huge", 5000)
    assert rec.admitted["huge"] == pytest.approx(30.0)


@virtual_time
async def test_settle_charges_usage_above_the_estimate_once() -> None:
    """Using more than reserved is charged as debt; only the first settle() counts."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))
    async with limiter.permit(100) as permit:
        permit.settle(700)
        permit.settle(0)  # ignored
    assert permit.settled
    assert limiter.statistics().token_debt == pytest.approx(100.0)
    rec = _Recorder(limiter)
    await rec.start("next", 0)
    assert rec.admitted["next"] == pytest.approx(10.0)


@virtual_time
async def test_cancelled_tpm_waiter_takes_nothing_and_unblocks_the_queue() -> None:
    """Cancelling a large queued reservation lets the small one behind it in at its own pace."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600))
    async with limiter.permit(600):
        pass
    rec = _Recorder(limiter)
    big, small = rec.start("big", 500), rec.start("small", 10)
    await sleep_until(rec.t0 + 0.5)
    big.cancel()
    await small
    assert rec.admitted == {"small": pytest.approx(1.0)}  # not 51 s
    with pytest.raises(asyncio.CancelledError):
        await big


# ----------------------------------------------------------------------------- 429 gate


@virtual_time
async def test_429_gate_pauses_every_sender_until_the_reset_and_extends() -> None:
    """After a 429 nobody is admitted until retry-after passes; a second 429 extends the pause."""
    limiter = Limiter(LimitsConfig())
    rec = _Recorder(limiter)
    limiter.on_rate_limited(5.0)
    assert limiter.statistics().gate_open_at == pytest.approx(rec.t0 + 5.0)
    tasks = [rec.start(f"s{i}") for i in range(3)]
    await sleep_until(rec.t0 + 3.0)
    limiter.on_rate_limited(5.0)  # extends to t0 + 8
    limiter.on_rate_limited(1.0)  # an earlier reset never shortens the pause
    await sleep_until(rec.t0 + 7.999)
    assert rec.admitted == {}
    await asyncio.gather(*tasks)
    assert list(rec.admitted.values()) == pytest.approx([8.0] * 3)
    stats = limiter.statistics()
    assert (stats.gate_open_at, stats.rate_limited, stats.gate_waits) == (None, 3, 3)


@virtual_time
async def test_429_gate_also_holds_requests_already_queued_for_a_slot() -> None:
    """A request waiting for a slot when a 429 arrives still waits for the gate."""
    limiter = Limiter(LimitsConfig(max_concurrency=1))
    rec = _Recorder(limiter)
    holder = rec.start("holder", hold=1.0)
    queued = rec.start("queued")
    await sleep_until(rec.t0 + 0.5)
    limiter.on_rate_limited(10.0)
    await asyncio.gather(holder, queued)
    assert rec.admitted["queued"] == pytest.approx(10.5)


@virtual_time
async def test_429_default_backoff_grows_per_episode_and_resets_on_success() -> None:
    """Without retry-after the pause is 1 s, then 2 s, then 4 s; a success resets it to 1 s."""
    limiter = Limiter(LimitsConfig())

    async def pause_after_429() -> float:
        t = _now()
        limiter.on_rate_limited()
        gate = limiter.statistics().gate_open_at
        assert gate is not None
        async with limiter.permit():
            pass
        assert _now() == pytest.approx(gate)
        return gate - t

    assert await pause_after_429() == pytest.approx(1.0)
    assert await pause_after_429() == pytest.approx(2.0)
    t = _now()
    limiter.on_rate_limited()
    limiter.on_rate_limited()  # same episode (gate still closed): no further growth
    assert limiter.statistics().gate_open_at == pytest.approx(t + 4.0)
    await sleep_until(t + 4.0)
    limiter.on_success()
    assert await pause_after_429() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- concurrency


@virtual_time
async def test_concurrency_cap_admits_waiters_in_arrival_order() -> None:
    """With max_concurrency=2 at most two requests run at once, admitted first come first served."""
    limiter = Limiter(LimitsConfig(max_concurrency=2))
    rec = _Recorder(limiter)
    tasks = [rec.start(f"r{i}", hold=1.0) for i in range(6)]
    await sleep_until(rec.t0 + 0.5)
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiting) == (2, 4)
    await asyncio.gather(*tasks)
    assert rec.order == [f"r{i}" for i in range(6)]
    assert list(rec.admitted.values()) == pytest.approx([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    assert limiter.statistics().in_flight == 0


@virtual_time
async def test_cancelled_slot_waiter_leaks_nothing() -> None:
    """A waiter cancelled in the queue is skipped; the slot goes to the next waiter."""
    limiter = Limiter(LimitsConfig(max_concurrency=1))
    rec = _Recorder(limiter)
    tasks = [rec.start("holder", hold=1.0), rec.start("a"), rec.start("b"), rec.start("c")]
    await sleep_until(rec.t0 + 0.5)
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert rec.order == ["holder", "a", "c"]
    stats = limiter.statistics()
    assert (stats.in_flight, stats.waiting) == (0, 0)


@virtual_time
async def test_waiter_cancelled_right_after_being_granted_passes_the_slot_on() -> None:
    """A waiter cancelled after the slot was handed to it but before it ran loses no wakeup."""
    limiter = Limiter(LimitsConfig(max_concurrency=1))
    rec = _Recorder(limiter)
    holder = limiter.permit()
    await holder.__aenter__()
    a, b = rec.start("a"), rec.start("b")
    await sleep_until(rec.t0 + 0.5)
    await holder.__aexit__(None, None, None)  # hands the slot to a
    a.cancel()  # before a resumes
    await b
    assert rec.order == ["b"]
    assert a.cancelled()
    assert limiter.statistics().in_flight == 0


@virtual_time
async def test_cancelled_gate_waiter_does_not_disturb_the_others() -> None:
    """Cancelling one sender paused on the 429 gate leaves the rest to go when it opens."""
    limiter = Limiter(LimitsConfig())
    rec = _Recorder(limiter)
    limiter.on_rate_limited(2.0)
    tasks = [rec.start(f"s{i}") for i in range(3)]
    await sleep_until(rec.t0 + 1.0)
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert rec.admitted == {"s1": pytest.approx(2.0), "s2": pytest.approx(2.0)}
    assert limiter.statistics().waiting == 0


# ----------------------------------------------------------------------------- AIMD


@virtual_time
async def test_adaptive_concurrency_halves_once_per_congestion_event() -> None:
    """A 429 halves the limit; more failures from requests sent before it do not halve again."""
    limiter = Limiter(LimitsConfig(max_concurrency=8, adaptive=True))
    assert limiter.statistics().concurrency_limit == 8
    async with limiter.permit() as p1, limiter.permit() as p2:
        limiter.on_rate_limited(0.0, permit=p1)
        assert limiter.statistics().concurrency_limit == 4
        limiter.on_rate_limited(0.0, permit=p2)
        limiter.on_timeout()  # reported inside an old block: same event
        assert limiter.statistics().concurrency_limit == 4
    async with limiter.permit() as p3:
        limiter.on_timeout(permit=p3)
    assert limiter.statistics().concurrency_limit == 2
    limiter.on_timeout()
    limiter.on_timeout()  # nothing from before the decrease is open: each counts
    assert limiter.statistics().concurrency_limit == 1  # never below 1


@virtual_time
async def test_adaptive_concurrency_grows_by_one_per_window_of_successes_up_to_the_cap() -> None:
    """At limit L, L successes raise it by one, admitting a waiter; it never exceeds the cap."""
    limiter = Limiter(LimitsConfig(max_concurrency=4, adaptive=True))
    limiter.on_timeout()
    assert limiter.statistics().concurrency_limit == 2
    rec = _Recorder(limiter)
    tasks = [rec.start(f"r{i}", hold=100.0) for i in range(3)]
    await sleep_until(rec.t0 + 1.0)
    assert sorted(rec.admitted) == ["r0", "r1"]
    limiter.on_success()
    assert limiter.statistics().concurrency_limit == 2
    limiter.on_success()
    await sleep_until(rec.t0 + 2.0)
    assert limiter.statistics().concurrency_limit == 3
    assert rec.admitted["r2"] == pytest.approx(1.0)
    for _ in range(50):
        limiter.on_success()
    assert limiter.statistics().concurrency_limit == 4
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@virtual_time
async def test_fixed_concurrency_ignores_timeouts() -> None:
    """Without adaptive, timeouts and 429s leave the concurrency limit alone."""
    limiter = Limiter(LimitsConfig(max_concurrency=8))
    limiter.on_timeout()
    limiter.on_rate_limited(0.0)
    assert limiter.statistics().concurrency_limit == 8


# ----------------------------------------------------------------------------- statistics


@virtual_time
async def test_statistics_is_a_frozen_snapshot_with_the_current_numbers() -> None:
    """statistics() reports slots, waiters and tokens, and does not change after it is taken."""
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600, max_concurrency=1))
    rec = _Recorder(limiter)
    async with limiter.permit(100) as permit:
        waiter = rec.start("waiter", 50)
        await sleep_until(rec.t0 + 0.5)
        snapshot = limiter.statistics()
        assert snapshot == LimiterStatistics(
            in_flight=1,
            concurrency_limit=1,
            waiting=1,
            tokens_reserved=100.0,
            tokens_available=pytest.approx(505.0),
            token_debt=0.0,
            gate_open_at=None,
            rate_limited=0,
            gate_waits=0,
            requests_admitted=1,
            token_window=60.0,
            window_learning="unknown",
        )
        permit.settle(40)
        assert limiter.statistics().tokens_reserved == 0.0
        assert limiter.statistics().tokens_available == pytest.approx(565.0)
    await waiter
    assert (snapshot.tokens_reserved, snapshot.waiting) == (100.0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.in_flight = 5  # type: ignore[misc]


def test_statistics_work_outside_an_event_loop() -> None:
    """A fresh limiter can be inspected from synchronous code."""
    stats = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600)).statistics()
    assert (stats.tokens_available, stats.in_flight, stats.gate_open_at) == (600.0, 0, None)


@virtual_time
async def test_injected_clock_drives_the_gate() -> None:
    """With an injected clock, gate_open_at is on that clock and the pause lasts retry-after."""
    loop = asyncio.get_running_loop()
    limiter = Limiter(LimitsConfig(burst_seconds=60.0, tpm=600), clock=lambda: loop.time() + 5000.0)
    t0 = loop.time()
    limiter.on_rate_limited(2.0)
    assert limiter.statistics().gate_open_at == pytest.approx(t0 + 5002.0)
    async with limiter.permit(10) as permit:
        assert loop.time() - t0 == pytest.approx(2.0)
    assert isinstance(permit, Permit)
    assert permit.waited == pytest.approx(2.0)


# ----------------------------------------------------------------------------- close


@virtual_time
async def test_permit_after_close_raises_client_closed() -> None:
    """Leaving `async with Limiter(...)` closes it; permit() then raises ClientClosedError."""
    async with Limiter(LimitsConfig()) as limiter, limiter.permit():
        pass
    assert limiter.closed
    with pytest.raises(ClientClosedError):
        limiter.permit()


@virtual_time
async def test_close_wakes_every_waiter_with_client_closed() -> None:
    """Closing fails senders waiting on the gate, a slot, the request rate or tokens at once."""
    t0 = _now()
    gated = Limiter(LimitsConfig())
    gated.on_rate_limited(60.0)
    slots = Limiter(LimitsConfig(max_concurrency=1))
    rate = Limiter(LimitsConfig(burst_seconds=60.0, rpm=1))
    tokens = Limiter(LimitsConfig(burst_seconds=60.0, tpm=60))
    holder = slots.permit()
    await holder.__aenter__()
    async with rate.permit(), tokens.permit(60):
        pass
    limiters = (gated, slots, rate, tokens)

    async def acquire(limiter: Limiter) -> None:
        async with limiter.permit(60):
            pass

    tasks = [asyncio.create_task(acquire(lim)) for lim in limiters]
    await sleep_until(t0 + 1.0)
    assert [lim.statistics().waiting for lim in limiters] == [1, 1, 1, 1]
    for lim in limiters:
        await lim.aclose()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [ClientClosedError] * 4
    assert _now() - t0 == pytest.approx(1.0)
    await holder.__aexit__(None, None, None)  # an open permit still exits cleanly
    assert slots.statistics().in_flight == 0
