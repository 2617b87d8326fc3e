"""Retry policy: the pure rules and header parsers of engine.endpoints.retry, then the client
obeying them against a scripted aiohttp server on loopback. Time is injected: waits are
recorded, not slept."""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import formatdate
from typing import Any

import orjson
import pytest

from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client
from engine.endpoints.limits import Limiter
from engine.endpoints.retry import (
    backoff_delay,
    is_in_flight_budget_error,
    parse_duration,
    parse_retry_after,
    should_retry,
)
from engine.errors import (
    AuthenticationError,
    ConflictError,
    DeadlineExceeded,
    EndpointError,
    EndpointTimeout,
    RateLimitError,
    RequestRejected,
    ServerError,
    TransportError,
)
from engine.telemetry.events import EventLog
from tests.scripted import CHAT, FakeTime, RecordingLimiter, Scripted, Step

KEY = "sk-TEST-SECRET-123"


# ----------------------------------------------------------------------------- pure: durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("12ms", 0.012),
        ("0.5s", 0.5),
        ("1s", 1.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("7.66s", 7.66),
        ("3", 3.0),
        ("0", 0.0),
        (" 20ms ", 0.02),
    ],
)
def test_parse_duration_reads_go_durations(text: str, seconds: float) -> None:
    """Go-style durations as OpenAI sends them in x-ratelimit-reset-* become seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "junk", ["-1", "", "   ", "garbage", "nan", "inf", "-inf", "6m0", "m", "1h-2m", "s1", "1.2.3s"]
)
def test_parse_duration_rejects_junk(junk: str) -> None:
    """Junk durations give None so the caller falls back to its backoff."""
    assert parse_duration(junk) is None


def test_parse_duration_none() -> None:
    """A missing header is no duration."""
    assert parse_duration(None) is None


# ----------------------------------------------------------------------------- pure: retry-after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "7"}, 7.0),  # header names are case-insensitive
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),  # a past date: go now
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),  # junk ms falls through
        ({"retry-after": "-1", "x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "12ms"}, 0.012),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "5s"}, 5.0),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "5000",
                "x-ratelimit-reset-tokens": "1m0s",
            },
            2.0,  # the exhausted budget decides
        ),
        ({"x-ratelimit-reset-requests": "-1", "x-ratelimit-reset-tokens": "0.5s"}, 0.5),
    ],
)
def test_parse_retry_after_formats(headers: dict[str, str], wait: float) -> None:
    """Every documented wait header format gives the wait in seconds."""
    assert parse_retry_after(headers, NOW) == pytest.approx(wait, abs=1e-6)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "-1"},
        {"retry-after": ""},
        {"retry-after": "soon"},
        {"retry-after-ms": "-5"},
        {"retry-after": "nan"},
        {"retry-after": "99999999999"},  # more than a day: junk, not a wait
        {"x-ratelimit-reset-requests": "-1"},
        {"x-ratelimit-reset-requests": ""},
        {"x-ratelimit-reset-tokens": "garbage"},
        {"x-ratelimit-reset-requests": "1700000000000"},  # an epoch in ms, not a duration
        {"retry-after": "Mon, 99 Foo 2024 99:99:99 GMT"},
    ],
)
def test_parse_retry_after_junk_gives_none(headers: dict[str, str]) -> None:
    """Junk or missing headers give None (the caller uses its backoff)."""
    assert parse_retry_after(headers, NOW) is None


# ----------------------------------------------------------------------------- pure: rules

RETRIED = [408, 409, 425, 429, 500, 502, 503, 504, 529]
NOT_RETRIED = [400, 401, 402, 403, 404, 422, 501, 505]


@pytest.mark.parametrize("status", RETRIED)
def test_should_retry_retryable_statuses(status: int) -> None:
    """408, 409, 425, 429, 500, 502, 503, 504 and 529 are retried."""
    assert should_retry(status) is True


@pytest.mark.parametrize("status", NOT_RETRIED)
def test_should_retry_never_these(status: int) -> None:
    """400, 401, 403, 404, 422, a plain 402 and other statuses are not retried."""
    assert should_retry(status) is False


def test_should_retry_connection_errors() -> None:
    """No response at all (connection error, timeout) is retried."""
    assert should_retry(None) is True


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (400, "true", True),
        (401, "TRUE", True),
        (503, "false", False),
        (429, "false", False),
        (None, "false", False),
        (503, "maybe", True),  # junk: the status rule applies
        (400, "", False),
    ],
)
def test_x_should_retry_decides_first(status: int | None, header: str, expected: bool) -> None:
    """x-should-retry overrides the status rule in both directions."""
    assert should_retry(status, {"X-Should-Retry": header}) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": 402, "metadata": {"limit_source": "openrouter_in_flight_budget"}}, True),
        ({"code": "in_flight_budget_exhausted", "message": "x"}, True),
        ({"message": "Your in-flight budget is exhausted; retry shortly"}, True),
        ({"message": "In flight spending budget reached"}, True),
        ({"code": 402, "message": "Insufficient credits. Add more using /credits"}, False),
        ({"code": 402, "metadata": {"limit_source": "openrouter_credits"}}, False),
        ({"code": 402, "metadata": {"limit_source": "openrouter_key_limit"}}, False),
        ({"code": "weight_exceeds_budget", "message": "larger than your in-flight budget"}, False),
        (None, False),
        ({}, False),
    ],
)
def test_402_only_in_flight_budget_is_retryable(
    error: dict[str, Any] | None, expected: bool
) -> None:
    """A 402 is retried only when OpenRouter says the in-flight budget is temporarily full."""
    assert is_in_flight_budget_error(error) is expected
    assert should_retry(402, {}, error) is expected


class _RecordingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(0)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b  # the top of the range, so tests can see the bound


def test_backoff_is_full_jitter_with_cap() -> None:
    """sleep = uniform(0, min(cap, base * 2**(attempt-1)))."""
    rng = _RecordingRandom()
    got = [backoff_delay(a, 1.0, 60.0, rng) for a in range(1, 9)]
    assert rng.calls == [(0.0, b) for b in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0)]
    assert got == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    r = random.Random(1)
    for attempt in range(1, 12):
        assert 0.0 <= backoff_delay(attempt, 0.5, 10.0, r) <= min(10.0, 0.5 * 2 ** (attempt - 1))


# ----------------------------------------------------------------------------- the server


@pytest.fixture
async def server() -> Any:
    async with Scripted() as s:
        yield s


def make_client(
    server: Scripted,
    *,
    limiter: Any = None,
    max_attempts: int = 4,
    events: EventLog | None = None,
    rng: random.Random | None = None,
    max_server_wait: float = 60.0,
    **endpoint: Any,
) -> tuple[Client, FakeTime, Any]:
    t = FakeTime()
    lim = limiter if limiter is not None else RecordingLimiter()
    cfg = EndpointConfig(base_url=server.base_url, model="m", **endpoint)
    client = Client(
        cfg,
        limits=lim,
        retry=RetryConfig(
            max_attempts=max_attempts,
            backoff_base=1.0,
            backoff_cap=60.0,
            max_server_wait=max_server_wait,
        ),
        events=events,
        api_key=KEY,
        clock=t.clock,
        sleep=t.sleep,
        rng=rng or random.Random(0),
    )
    return client, t, lim


# ----------------------------------------------------------------------------- status rules


@pytest.mark.parametrize("status", RETRIED)
async def test_retryable_status_is_retried_then_succeeds(server: Scripted, status: int) -> None:
    """Each retryable status is retried once and the second answer is returned."""
    server.push(Step(status=status, body={"error": {"message": "try again"}}))
    client, t, _ = make_client(server)
    async with client:
        out = await client.complete("hi")
    assert out.choices[0].text == "ok"
    assert out.attempts == 2
    assert len(server.raw_bodies) == 2
    assert len(t.sleeps) + (1 if status == 429 else 0) >= 1


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, RequestRejected),
        (401, AuthenticationError),
        (402, RequestRejected),
        (403, AuthenticationError),
        (404, RequestRejected),
        (422, RequestRejected),
        (501, ServerError),
    ],
)
async def test_non_retryable_status_raises_at_once(
    server: Scripted, status: int, cls: type[EndpointError]
) -> None:
    """400/401/402/403/404/422 (and 501) raise after one attempt, with status and endpoint."""
    server.push(Step(status=status, body={"error": {"message": "no", "code": status}}))
    client, t, _ = make_client(server)
    async with client:
        with pytest.raises(cls) as info:
            await client.complete("hi")
    err = info.value
    assert type(err) is cls
    assert (err.status, err.attempt, err.endpoint, err.retryable) == (status, 1, CHAT, False)
    assert len(server.raw_bodies) == 1
    assert t.sleeps == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (429, RateLimitError),
        (503, ServerError),
        (529, ServerError),
        (409, ConflictError),
        (425, ConflictError),
        (408, EndpointTimeout),
    ],
)
async def test_retries_run_out(server: Scripted, status: int, cls: type[EndpointError]) -> None:
    """When every attempt fails, the last failure is raised with the attempt count."""
    server.push(*[Step(status=status, body={"error": {"message": "busy"}})] * 3)
    client, _, _ = make_client(server, max_attempts=3)
    async with client:
        with pytest.raises(cls) as info:
            await client.complete("hi")
    assert info.value.attempt == 3
    assert info.value.status == status
    assert info.value.retryable is True
    assert len(server.raw_bodies) == 3


async def test_x_should_retry_true_retries_a_400(server: Scripted) -> None:
    """x-should-retry: true makes even a 400 retried."""
    server.push(Step(status=400, headers={"x-should-retry": "true"}, body={"error": {}}))
    client, t, _ = make_client(server)
    async with client:
        out = await client.complete("hi")
    assert out.attempts == 2
    assert len(t.sleeps) == 1


async def test_x_should_retry_false_stops_a_503(server: Scripted) -> None:
    """x-should-retry: false makes a 503 final."""
    server.push(Step(status=503, headers={"x-should-retry": "false"}, body={"error": {}}))
    client, t, _ = make_client(server)
    async with client:
        with pytest.raises(ServerError) as info:
            await client.complete("hi")
    assert info.value.retryable is False
    assert info.value.attempt == 1
    assert t.sleeps == []


async def test_402_in_flight_budget_is_retried_after_retry_after(server: Scripted) -> None:
    """OpenRouter's temporary in-flight budget 402 waits Retry-After and retries."""
    body = {
        "error": {
            "code": 402,
            "message": "in-flight budget exhausted",
            "metadata": {"limit_source": "openrouter_in_flight_budget"},
        }
    }
    server.push(Step(status=402, body=body, headers={"retry-after": "2"}))
    client, t, _ = make_client(server)
    async with client:
        out = await client.complete("hi")
    assert out.attempts == 2
    assert t.sleeps == [2.0]


async def test_402_insufficient_credits_is_final(server: Scripted) -> None:
    """A 402 for missing credits is not retried, even with a retry-after header."""
    body = {"error": {"code": 402, "message": "Insufficient credits"}}
    server.push(Step(status=402, body=body, headers={"retry-after": "2"}))
    client, t, _ = make_client(server)
    async with client:
        with pytest.raises(RequestRejected):
            await client.complete("hi")
    assert len(server.raw_bodies) == 1
    assert t.sleeps == []


# ----------------------------------------------------------------------------- waits


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "150"}, 0.15),
        ({"x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({"x-ratelimit-reset-tokens": "12ms"}, 0.012),
        ({"x-ratelimit-reset-requests": "2m0s", "x-ratelimit-remaining-requests": "0"}, 120.0),
    ],
)
async def test_server_given_wait_replaces_backoff(
    server: Scripted, headers: dict[str, str], wait: float
) -> None:
    """A 503 with a wait header sleeps exactly that wait (under ``max_server_wait``)."""
    server.push(Step(status=503, headers=headers, body={"error": {}}))
    client, t, _ = make_client(server, max_server_wait=600.0)
    async with client:
        await client.complete("hi")
    assert t.sleeps == [pytest.approx(wait)]


async def test_retry_after_http_date(server: Scripted) -> None:
    """retry-after as an HTTP date waits until that date."""
    server.push(
        Step(status=503, headers={"retry-after": formatdate(time.time() + 20, usegmt=True)})
    )
    client, t, _ = make_client(server)
    async with client:
        await client.complete("hi")
    assert len(t.sleeps) == 1
    assert 18.0 <= t.sleeps[0] <= 20.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "-1"},
        {"retry-after": ""},
        {"retry-after-ms": "soon", "x-ratelimit-reset-requests": "-1"},
        {"x-ratelimit-reset-tokens": "garbage"},
    ],
)
async def test_junk_wait_headers_fall_back_to_backoff(
    server: Scripted, headers: dict[str, str]
) -> None:
    """Junk wait headers are ignored: the full-jitter backoff is used."""
    server.push(Step(status=503, headers=headers), Step(status=503, headers=headers))
    rng = _RecordingRandom()
    client, t, _ = make_client(server, rng=rng)
    async with client:
        await client.complete("hi")
    assert rng.calls == [(0.0, 1.0), (0.0, 2.0)]
    assert t.sleeps == [1.0, 2.0]


async def test_429_with_wait_closes_the_shared_gate_instead_of_sleeping(server: Scripted) -> None:
    """A 429 with retry-after tells the limiter (which pauses everyone); the task does not sleep."""
    server.push(Step(status=429, headers={"retry-after": "7"}, body={"error": {}}))
    client, t, lim = make_client(server)
    async with client:
        out = await client.complete("hi")
    assert lim.rate_limited == [7.0]
    assert t.sleeps == []
    assert out.attempts == 2


async def test_429_without_wait_tells_limiter_and_backs_off(server: Scripted) -> None:
    """A bare 429 reports to the limiter without a wait and sleeps the jittered backoff."""
    server.push(Step(status=429, body={"error": {}}))
    client, t, lim = make_client(server, rng=_RecordingRandom())
    async with client:
        await client.complete("hi")
    assert lim.rate_limited == [None]
    assert t.sleeps == [1.0]


async def test_retry_after_in_error_metadata(server: Scripted) -> None:
    """OpenRouter's error.metadata.retry_after_seconds is used when no header says."""
    body = {"error": {"code": 429, "message": "upstream", "metadata": {"retry_after_seconds": 17}}}
    server.push(Step(status=200, body=body))
    client, _, lim = make_client(server)
    async with client:
        await client.complete("hi")
    assert lim.rate_limited == [17.0]


# ----------------------------------------------------------------------------- transport


async def test_disconnect_on_reused_connection_is_retried_at_once(server: Scripted) -> None:
    """A ServerDisconnectedError on a pooled connection is resent immediately, no backoff."""
    client, t, _ = make_client(server)
    async with client:
        await client.complete("warm the pool")
        server.push(Step(reset=True))
        out = await client.complete("hi")
        stats = client.statistics()
    assert out.attempts == 2
    assert t.sleeps == []
    assert stats.retries == {"disconnect_reused": 1}


async def test_disconnect_on_fresh_connection_backs_off(server: Scripted) -> None:
    """A disconnect on a brand-new connection is a transport error with normal backoff."""
    server.push(Step(reset=True))
    client, t, _ = make_client(server)
    async with client:
        out = await client.complete("hi")
        stats = client.statistics()
    assert out.attempts == 2
    assert len(t.sleeps) == 1
    assert stats.retries == {"transport": 1}


async def test_second_disconnect_is_not_immediate(server: Scripted) -> None:
    """Only one immediate resend per request; the next disconnect backs off."""
    client, t, _ = make_client(server)
    async with client:
        await asyncio.gather(*(client.complete("warm") for _ in range(3)))  # pool of 3
        server.push(Step(reset=True), Step(reset=True))
        out = await client.complete("hi")
        stats = client.statistics()
    assert out.attempts == 3
    assert stats.retries["disconnect_reused"] == 1
    assert len(t.sleeps) == 1


async def test_connection_refused_retries_then_raises_transport_error() -> None:
    """Nothing listening: retried with backoff, then TransportError with the attempt count."""
    async with Scripted() as s:
        url = s.base_url  # the port is closed once the server is gone
    dead = Scripted()
    dead.base_url = url
    client, t, _ = make_client(dead, max_attempts=3)
    async with client:
        with pytest.raises(TransportError) as info:
            await client.complete("hi")
    assert info.value.attempt == 3
    assert info.value.status is None
    assert len(t.sleeps) == 2


async def test_read_timeout_is_retried_and_reported(server: Scripted) -> None:
    """A read timeout is an EndpointTimeout, retried, and reported to the limiter."""
    server.push(Step(delay=1.0))
    client, t, lim = make_client(server, timeout=0.05)
    async with client:
        out = await client.complete("hi")
    assert out.attempts == 2
    assert lim.timeouts == 1
    assert len(t.sleeps) == 1


# ----------------------------------------------------------------------------- deadline


async def test_deadline_gives_up_when_the_wait_would_pass_it(server: Scripted) -> None:
    """A server-given wait beyond the deadline raises DeadlineExceeded at once, without waiting."""
    server.push(Step(status=503, headers={"retry-after": "30"}, body={"error": {}}))
    client, t, _ = make_client(server)
    async with client:
        with pytest.raises(DeadlineExceeded) as info:
            await client.complete("hi", deadline=10.0)
    assert t.sleeps == []
    assert info.value.status == 503
    assert info.value.attempt == 1
    assert len(server.raw_bodies) == 1


async def test_deadline_bounds_total_backoff(server: Scripted) -> None:
    """Backoff waits stop before their sum would pass the deadline."""
    server.push(*[Step(status=503)] * 20)
    client, t, _ = make_client(server, max_attempts=20, rng=_RecordingRandom())
    async with client:
        with pytest.raises(DeadlineExceeded):
            await client.complete("hi", deadline=10.0)
    assert t.sleeps == [1.0, 2.0, 4.0]  # the next (8 s) would end past 10 s
    assert sum(t.sleeps) <= 10.0


async def test_deadline_covers_queueing_for_a_permit(server: Scripted) -> None:
    """A request that cannot get a permit before its deadline raises DeadlineExceeded."""
    limiter = Limiter(LimitsConfig(max_concurrency=1))
    client, _, _ = make_client(server, limiter=limiter)
    async with client, limiter.permit(0):  # hold the only slot
        with pytest.raises(DeadlineExceeded) as info:
            await client.complete("hi", deadline=0.02)
    assert "queued" in str(info.value)
    assert server.raw_bodies == []


# ----------------------------------------------------------------------------- body reuse


async def test_body_bytes_identical_across_retries(server: Scripted) -> None:
    """The request body is serialized once: every retry sends the same bytes."""
    server.push(Step(status=503), Step(status=429), Step(reset=True), Step(status=500))
    client, _, _ = make_client(server, max_attempts=6)
    async with client:
        out = await client.complete("hello", n=3, seed=5, temperature=0.7)
    assert out.attempts == 5
    assert len(set(server.raw_bodies)) == 1
    assert orjson.loads(server.raw_bodies[0])["n"] == 3


# ----------------------------------------------------------------------------- shared gate


async def test_429_retry_after_pauses_other_senders(server: Scripted) -> None:
    """With the real Limiter, one 429 with retry-after holds back every other sender too."""
    limiter = Limiter(LimitsConfig(max_concurrency=8))
    server.push(Step(status=429, headers={"retry-after-ms": "80"}, body={"error": {}}))
    events = EventLog(None)
    client, _, _ = make_client(server, limiter=limiter, events=events)
    async with client:
        first = asyncio.create_task(client.complete("first"))
        for _ in range(2000):  # until the 429 has been seen (at most ~2 s)
            if limiter.statistics().gate_open_at is not None:
                break
            await asyncio.sleep(0.001)
        t_429 = server.answered[0]
        others = [asyncio.create_task(client.complete(f"other {i}")) for i in range(4)]
        await asyncio.gather(first, *others)
    later = server.arrivals[1:]
    assert len(later) == 5
    assert min(later) - t_429 >= 0.075  # nobody reached the server while the gate was shut
    stats = limiter.statistics()
    assert stats.rate_limited == 1
    assert stats.gate_waits >= 4


# ----------------------------------------------------------------------------- cancellation


async def test_deadline_in_flight_and_no_leftover_cancellation(server: Scripted) -> None:
    """A deadline passing mid-request raises DeadlineExceeded and leaves the task uncancelled."""
    server.push(Step(delay=3.0))
    client, _, _ = make_client(server, timeout=60.0)
    async with client:
        with pytest.raises(DeadlineExceeded, match="in flight"):
            # long enough that the request is sent before it passes, even on a loaded machine
            await client.complete("hi", deadline=0.3)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)  # no stray CancelledError arrives later
        out = await client.complete("again")
    assert out.choices


async def test_outside_cancellation_is_not_a_timeout(server: Scripted) -> None:
    """Cancelling a call from outside propagates CancelledError; an outer timeout still works."""
    server.push(Step(delay=1.0), Step(delay=1.0))
    client, _, _ = make_client(server, timeout=0.5)
    async with client:
        call = asyncio.create_task(client.complete("hi"))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await client.complete("hi")
        stats = client.statistics()
    assert stats.retries == {}
