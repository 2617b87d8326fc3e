"""Window learning: the rpm/tpm buckets size themselves to the window the server enforces.

On a virtual-time loop (``tests/virtual_time.py``): scripted ``x-ratelimit-*`` header
sequences; the simulated server's own rate limiter (``engine.testing.sim.limits``) answering
a limiter's permits with and without headers, over a minute window and a one-second window;
hostile headers. The goodput the default reaches against real servers is a benchmark figure
(``benchmarks/bench_ratelimit.py``), not asserted here.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from engine.config.loading import load_config
from engine.config.sections import EndpointConfig, LimitsConfig
from engine.endpoints.budget import TokenBudget
from engine.endpoints.client import Client
from engine.endpoints.limits import Limiter, Permit
from engine.endpoints.retry import parse_retry_after
from engine.endpoints.window import parse_rate_headers, rate_headers_of
from engine.errors import ConfigError
from engine.testing.sim import SimConfig, SimServer
from engine.testing.sim.limits import RateLimits
from tests.virtual_time import sleep_until, virtual_time


def _now() -> float:
    return asyncio.get_running_loop().time()


def _headers(remaining: float, reset: str, limit: float | None = 600, kind: str = "requests"):
    h = {f"x-ratelimit-remaining-{kind}": f"{remaining:g}", f"x-ratelimit-reset-{kind}": reset}
    if limit is not None:
        h[f"x-ratelimit-limit-{kind}"] = f"{limit:g}"
    return h


async def _grant(limiter: Limiter, n: int) -> list[float]:
    """Take ``n`` permits one after another (each answered by nobody); their grant times."""
    times = []
    for _ in range(n):
        async with limiter.permit():
            times.append(_now())
    return times


# ----------------------------------------------------------------------------- parsing


def test_headers_are_parsed_as_durations_or_seconds_and_junk_is_absent() -> None:
    h = _headers(589, "6m0s")
    assert parse_rate_headers(h, "requests") == parse_rate_headers(
        {k.upper(): v for k, v in h.items()}, "requests"
    )
    info = parse_rate_headers(h, "requests")
    assert info is not None and (info.limit, info.remaining, info.reset) == (600, 589, 360.0)
    assert parse_rate_headers(_headers(3, "20ms"), "requests").reset == pytest.approx(0.02)  # type: ignore[union-attr]
    assert parse_rate_headers(_headers(3, "1.5"), "requests").reset == 1.5  # type: ignore[union-attr]
    assert parse_rate_headers(_headers(3, "1s", None), "requests").limit is None  # type: ignore[union-attr]
    assert parse_rate_headers(_headers(3, "1s", kind="tokens"), "requests") is None
    for remaining, reset in (("-1", "1s"), ("nan", "1s"), ("inf", "1s"), ("1e20", "1s"),
                             ("soon", "1s"), ("3", "-1"), ("3", "soon"), ("3", "3d"),
                             ("3", "90000")):  # fmt: skip
        bad = {"x-ratelimit-remaining-requests": remaining, "x-ratelimit-reset-requests": reset}
        assert parse_rate_headers(bad, "requests") is None, bad
    junk_limit = {**_headers(3, "1s"), "x-ratelimit-limit-requests": "inf"}
    assert parse_rate_headers(junk_limit, "requests").limit is None  # type: ignore[union-attr]


def test_max_burst_seconds_is_validated() -> None:
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(None, ["limits.max_burst_seconds=0"])
    with pytest.raises(ValueError, match="max_burst_seconds"):
        TokenBudget(600, max_burst_seconds=math.nan)


# ----------------------------------------------------------------------------- scripted headers


@virtual_time
async def test_minute_window_headers_open_the_minute_burst() -> None:
    """rpm=600 starts with a 1 s bucket (10 requests); an answer saying 589 remain and the
    bucket is full again in 1.1 s (600 per minute: 589 + 11 = 600, a minute's worth) sizes
    it to 60 s and lets the 589 go at once."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    async with limiter.permit() as first:
        first.answered(_headers(589, "1.1s"), True)  # inside the block, as the client does
    stats = limiter.statistics()
    assert stats.request_window == pytest.approx(60.0)
    assert stats.window_learning == "headers"
    times = await _grant(limiter, 600)
    assert times[:589] == [t0] * 589  # 9 left in the first bucket, then the synced level
    assert times[589] > t0


@virtual_time
async def test_one_second_window_headers_keep_pacing() -> None:
    """remaining 8, full again in 200 ms at 600/min: a 10-request (1 s) window; the level
    becomes the server's 8 (the request was answered as it was granted), then the rate."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    async with limiter.permit() as first:
        first.answered(_headers(8, "200ms"), True)
    assert limiter.statistics().request_window == pytest.approx(1.0)
    times = await _grant(limiter, 20)
    assert times[:8] == [t0] * 8  # the server's 8 (ours had 9 left: cut to the server's)
    assert times[8:] == pytest.approx([t0 + 0.1 * k for k in range(1, 13)])


@virtual_time
async def test_a_later_answer_places_its_count_among_the_grants_since() -> None:
    """The server counted a request's `remaining` when it admitted it: requests granted
    after it are taken off, and requests still in flight too (it may have admitted them
    later although they were granted earlier; one granted after it and in flight counts
    twice: the level is a lower bound)."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    contexts = [limiter.permit() for _ in range(3)]
    held: list[Permit] = [await ctx.__aenter__() for ctx in contexts]  # three in flight
    # the second answers: 500 remain after it; the third was granted after it, the first
    # and the third are in flight
    held[1].answered(_headers(500, "10s"), True)
    times = await _grant(limiter, 498)
    assert times[:497] == [t0] * 497  # 500 - 1 granted after - 2 in flight
    assert times[497] > t0
    for ctx in contexts:
        await ctx.__aexit__(None, None, None)


@virtual_time
async def test_an_answer_lowers_the_level_only_when_surely_above_the_server() -> None:
    """A full client bucket (10) told at once that 0 remain pauses until refilled; told
    that 5 remain when the request was granted 0.3 s before (the server may have refilled
    3 since), it keeps a level of up to 8."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    async with limiter.permit() as p:
        p.answered(_headers(0, "1s"), True)  # granted and answered at t0: surely 0 now
    times = await _grant(limiter, 2)
    assert times == pytest.approx([t0 + 0.1, t0 + 0.2])

    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t1 = _now()
    async with limiter.permit() as p:
        await sleep_until(t1 + 0.3)
        p.answered(_headers(5, "500ms"), True)  # at most 5 + 3 now; ours is full: cut to 8
    assert limiter.statistics().request_window == pytest.approx(1.0)
    times = await _grant(limiter, 9)
    assert times[:8] == [t1 + 0.3] * 8
    assert times[8] == pytest.approx(t1 + 0.4)


@virtual_time
async def test_tokens_headers_size_the_token_bucket() -> None:
    limiter = Limiter(LimitsConfig(tpm=60_000, max_concurrency=1000))  # 1,000 tokens/s
    async with limiter.permit(100) as p:
        p.answered(_headers(59_000, "900ms", 60_000, kind="tokens"), True)
    stats = limiter.statistics()
    assert stats.token_window == pytest.approx(59.9)
    assert stats.window_learning == "headers"
    assert stats.tokens_available == pytest.approx(59_000)


# ----------------------------------------------------------------------------- hostile headers


@virtual_time
async def test_hostile_headers_cannot_lift_the_ceiling() -> None:
    """Answers claiming a bucket ever full cannot make the client exceed its rate plus
    max_burst_seconds of it: 600/min and 60 s give at most 600 + 10 * T requests in T s."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    times = []
    hostile = {
        "x-ratelimit-limit-requests": "1e15",
        "x-ratelimit-remaining-requests": "1e15",
        "x-ratelimit-reset-requests": "86399",
    }
    for _ in range(900):
        async with limiter.permit() as p:
            times.append(_now() - t0)
            p.answered(hostile, True)
    assert limiter.statistics().request_window == pytest.approx(60.0)  # capped
    assert times[:600] == [0.0] * 600
    assert times[600:] == pytest.approx([0.1 * k for k in range(1, 301)])


@virtual_time
async def test_hostile_headers_cannot_stall_the_client() -> None:
    """Answers saying nothing remains, for a day, with a limit of 1 per minute: the client
    still sends at its configured rate (one every 0.1 s at 600/min), never slower."""
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    t0 = _now()
    hostile = {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "23h59m",
    }
    times = []
    for _ in range(30):
        async with limiter.permit() as p:
            times.append(_now() - t0)
            p.answered(hostile, False)
    assert times[1:] == pytest.approx([0.1 * k for k in range(1, 30)])
    assert limiter.statistics().request_window is not None


@virtual_time
async def test_junk_headers_are_ignored() -> None:
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=1000))
    async with limiter.permit() as p:
        junk = {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "-1"}
        p.answered(junk, True)
    stats = limiter.statistics()
    assert stats.window_learning == "probing"  # as with no headers at all
    assert stats.request_window == pytest.approx(1.0)


# ----------------------------------------------------------------------------- against the sim


@pytest.mark.parametrize("window", [60.0, 1.0])
def test_the_simulators_counts_give_its_window(window: float) -> None:
    """What the learning relies on: the simulator's remaining + reset * limit / 60 is its
    bucket, a minute's or a second's worth of the same rate, for requests and tokens."""
    now = [1000.0]
    server = RateLimits(1200, 36_000, window, headers=True, clock=lambda: now[0])
    for _ in range(5):
        refused, headers = server.admit(33)
        assert refused is None
        now[0] += 0.01
    for kind, per_minute in (("requests", 1200), ("tokens", 36_000)):
        info = parse_rate_headers(headers, kind)  # type: ignore[arg-type]
        assert info is not None and info.limit == per_minute
        full = info.remaining + info.reset * per_minute / 60.0
        assert full == pytest.approx(per_minute * window / 60.0, abs=1.01)


async def _drive(
    limiter: Limiter, server: RateLimits | _Switchable, requests: int, latency: float = 0.05
) -> tuple[int, int]:
    """``requests`` calls through ``limiter`` against the simulator's limiter, which admits
    each at its grant and answers ``latency`` later; a 429 is retried after the wait it asks.
    Returns (429s, clock seconds until the last success)."""
    too_many = 0
    t0 = _now()
    last = t0

    async def call() -> None:
        nonlocal too_many, last
        while True:
            async with limiter.permit() as permit:
                refused, headers = server.admit(0)
                await asyncio.sleep(latency)
                if refused is None:
                    permit.answered(headers, True)
                    limiter.on_success()
                    last = max(last, _now())
                    return
                permit.answered(refused.headers, False)
                too_many += 1
                limiter.on_rate_limited(parse_retry_after(refused.headers), permit=permit)

    await asyncio.gather(*(call() for _ in range(requests)))
    return too_many, last - t0


@pytest.mark.parametrize("headers", [True, False], ids=["headers", "no-headers"])
@virtual_time
async def test_minute_window_server_burst_is_found(headers: bool) -> None:
    """600/min over a minute window: 1,500 requests. With headers the first answer opens
    the burst (no 429); without, probing finds most of it for a 429 or two. Either way the
    requests end well before the 1 s bucket's 149 s (1,500 - 10 at 10/s)."""
    loop = asyncio.get_running_loop()
    server = RateLimits(600, None, 60.0, headers=headers, clock=loop.time)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    too_many, seconds = await _drive(limiter, server, 1500)
    stats = limiter.statistics()
    assert stats.window_learning == ("headers" if headers else "settled")
    assert too_many <= (0 if headers else 2)
    assert stats.request_window is not None and stats.request_window >= 30.0
    # the whole burst was used: 600 at once, 900 more at 10/s
    assert seconds <= 90.0 + 1.0


@pytest.mark.parametrize("headers", [True, False], ids=["headers", "no-headers"])
@virtual_time
async def test_one_second_window_server_is_not_flooded(headers: bool) -> None:
    """600/min over one second: 300 requests draw at most two 429s (the probe that finds
    the window), and the bucket stays at about one second."""
    loop = asyncio.get_running_loop()
    server = RateLimits(600, None, 1.0, headers=headers, clock=loop.time)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    too_many, seconds = await _drive(limiter, server, 300)
    stats = limiter.statistics()
    assert too_many <= (0 if headers else 2)
    assert stats.request_window is not None and stats.request_window <= 1.05
    assert seconds <= 29.0 + 1.0  # paced at the rate from the start


@virtual_time
async def test_learning_off_keeps_the_configured_bucket() -> None:
    limiter = Limiter(LimitsConfig(rpm=600, learn_window=False, max_concurrency=1000))
    async with limiter.permit() as p:
        p.answered(_headers(589, "1.1s"), True)
    stats = limiter.statistics()
    assert (stats.request_window, stats.window_learning) == (pytest.approx(1.0), None)


async def test_the_client_reports_answers_to_its_permits() -> None:
    """Through the real client and the simulated server on loopback: one answer with the
    server's headers sizes the buckets to its minute window."""
    config = SimConfig(rpm=600, tpm=60_000, burst_seconds=60.0)
    async with SimServer(config) as sim:
        client = Client(
            EndpointConfig(base_url=sim.base_url, model="sim-model", max_tokens=8),
            limits=LimitsConfig(rpm=600, tpm=60_000),
            api_key="sk-test",
        )
        async with client:
            await client.complete("hello")
            stats = client.statistics().limiter
    assert stats is not None
    assert stats.window_learning == "headers"
    assert stats.request_window == pytest.approx(60.0, abs=0.2)
    assert stats.token_window == pytest.approx(60.0, abs=0.2)


# ----------------------------------------------------------------------------- probing again


class _Switchable:
    """The simulator's limits behind one name, swapped for new ones mid-test (a provider
    that changes the window it enforces); ``fail`` lists the admissions (0-based, counted
    over the test) answered with a 429 whatever the limits say (another tenant's burst)."""

    def __init__(self, window: float, rpm: float = 600, fail: tuple[int, ...] = ()) -> None:
        self.rpm = rpm
        self.limits = RateLimits(rpm, None, window, headers=False, clock=_now)
        self.fail = set(fail)
        self.admitted = 0

    def enforce(self, window: float) -> None:
        self.limits = RateLimits(self.rpm, None, window, headers=False, clock=_now)

    def admit(self, tokens: int):  # the RateLimits interface _drive uses
        n = self.admitted
        self.admitted += 1
        if n in self.fail:
            return self._refused(), {}
        return self.limits.admit(tokens)

    def _refused(self):
        server = RateLimits(60, None, 1.0, headers=False, clock=_now)
        server.admit(0)
        refused, _ = server.admit(0)  # an empty bucket's 429: wait about a second
        assert refused is not None
        return refused


def _learner(limiter: Limiter):
    learner = limiter._windows[0]
    assert learner is not None
    return learner


def test_the_bucket_counts_what_it_spills_while_full() -> None:
    now = [100.0]
    budget = TokenBudget(600, burst_seconds=1.0, clock=lambda: now[0])  # 10/s, holds 10
    assert budget.level() == 10 and budget.spilled == 0 and budget.full_at == -math.inf
    now[0] += 2.0
    assert budget.level() == 10
    assert budget.spilled == pytest.approx(20.0)  # two seconds of rate it could not hold
    assert (budget.full_at, budget.full_mark) == (102.0, 0.0)
    budget.take(budget.level())
    now[0] += 0.5
    budget.level()
    assert budget.spilled == pytest.approx(20.0)  # refilling, not full: nothing spilled
    now[0] += 1.0  # full again after 0.5 s more, then 0.5 s of spill
    budget.level()
    assert budget.spilled == pytest.approx(25.0)
    assert (budget.full_at, budget.full_mark) == (103.5, 10.0)


@virtual_time
async def test_probing_restarts_after_a_quiet_spell_and_finds_a_window_that_grew() -> None:
    """600/min: a one-second window is learned (a 429 or two), then the provider moves to a
    minute window. While the client stays busy the bucket never fills and nothing is
    probed (its size does not matter: the rate does); after a quiet spell the next burst
    probes again and opens the minute's burst."""
    server = _Switchable(1.0)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    too_many, _ = await _drive(limiter, server, 300)
    assert too_many <= 2 and limiter.statistics().request_window == pytest.approx(1.0, abs=0.05)
    learner = _learner(limiter)
    too_many, seconds = await _drive(limiter, server, 300)  # busy: no credit, no probe
    assert (too_many, learner.credit, learner.mode) == (0, 0.0, "settled")
    assert seconds == pytest.approx(30.0, abs=0.2)

    server.enforce(60.0)
    await asyncio.sleep(70.0)  # the bucket sits full: the server may bank more than it
    assert learner.credit == pytest.approx(69.0 * 10, abs=5)
    too_many, seconds = await _drive(limiter, server, 1500)
    assert too_many <= 2
    assert limiter.statistics().request_window >= 55.0  # type: ignore[operator]
    assert seconds <= 90.0 + 1.0  # the burst was found at once: 600 now, 900 at 10/s


@virtual_time
async def test_a_transient_429_does_not_pin_the_burst() -> None:
    """Another tenant's 429 while the client probes a minute window ends the probing at
    a few seconds; the next quiet spell lets it probe again and find the minute."""
    server = _Switchable(60.0, fail=(40,))
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    await _drive(limiter, server, 1500)
    pinned = limiter.statistics().request_window
    assert pinned is not None and pinned < 10.0  # the fluke ended the first probing early
    await asyncio.sleep(70.0)
    too_many, seconds = await _drive(limiter, server, 1500)
    assert too_many <= 1
    assert limiter.statistics().request_window >= 55.0  # type: ignore[operator]
    assert seconds <= 90.0 + 1.0


@pytest.mark.parametrize("window", [40.0, 10.0])
@virtual_time
async def test_probing_converges_close_to_the_window(window: float) -> None:
    """A window inside the ceiling (40 s or 10 s of 60): the first 429 takes the bucket back
    to what the step's earlier answers proved (not the whole step: it was up to half the
    window), and the window is known from above; rounds after quiet spells stay within a
    few percent of it, at one 429 a round (a one-unit step past it)."""
    server = _Switchable(window)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    learner = _learner(limiter)
    too_many, _ = await _drive(limiter, server, 1000)
    assert too_many <= 64  # one failed step: at most the requests in flight
    first = limiter.statistics().request_window
    assert first is not None and 0.97 * window <= first <= 1.01 * window
    assert learner.upper <= 1.01 * window * 10 + 1
    for _ in range(3):
        await asyncio.sleep(window + 10.0)
        too_many, _ = await _drive(limiter, server, 1000)
        assert too_many <= 1
        learned = limiter.statistics().request_window
        assert learned is not None and 0.95 * window <= learned <= 1.01 * window


@virtual_time
async def test_failed_probes_back_off() -> None:
    """A one-second window and forty bursts of 40 requests, 5 s apart: each quiet spell
    lets the bucket fill and spill, but every failed probe doubles the quiet the next one
    waits for, so the 429s thin out: under 1% of the requests in all, none in most of the
    later bursts."""
    server = _Switchable(1.0)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    per_burst = []
    for _ in range(40):
        too_many, _ = await _drive(limiter, server, 40)
        per_burst.append(too_many)
        await asyncio.sleep(5.0)
    assert sum(per_burst) <= 0.01 * 40 * 40 * 1.5  # 429s per request sent, about 1%
    assert sum(per_burst[20:]) <= 3
    assert limiter.statistics().request_window <= 1.05  # type: ignore[operator]


@virtual_time
async def test_a_window_that_shrank_is_found_from_one_burst() -> None:
    """A minute window learned, then the provider enforces one second: the first burst
    draws a 429 per request in flight beyond the server's 10; the 429s place the window
    (what went through since the bucket was full, less the refill) and the next bursts
    draw two at most."""
    server = _Switchable(60.0)
    limiter = Limiter(LimitsConfig(rpm=600, max_concurrency=64))
    await _drive(limiter, server, 1000)
    assert limiter.statistics().request_window == pytest.approx(60.0)
    server.enforce(1.0)
    await asyncio.sleep(70.0)
    too_many, _ = await _drive(limiter, server, 100)
    assert too_many <= 64
    assert limiter.statistics().request_window <= 1.1  # type: ignore[operator]
    for _ in range(2):
        await asyncio.sleep(70.0)
        too_many, seconds = await _drive(limiter, server, 100)
        assert too_many <= 2
        assert seconds <= 9.0 + 0.3


def test_rate_headers_are_picked_out_once_per_answer() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    assert rate_headers_of(None) is None
    assert rate_headers_of({}) is None
    # no remaining count: nothing for any bucket to read, whatever else is there
    assert rate_headers_of({"Content-Type": "application/json"}) is None
    assert rate_headers_of({"X-RateLimit-Limit-Requests": "60"}) is None
    mixed = {"X-RateLimit-Remaining-Tokens": "900", "X-RateLimit-Reset-Tokens": "6m0s"}
    picked = rate_headers_of(mixed)
    assert picked == {"x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"}
    info = parse_rate_headers(picked, "tokens")
    assert info is not None and info.remaining == 900 and info.reset == 360
    assert parse_rate_headers(picked, "requests") is None
    ci = CIMultiDictProxy(CIMultiDict({"X-Ratelimit-Remaining-Requests": "5"}))
    assert rate_headers_of(ci) is ci  # already case-insensitive: passed through, not copied
