"""Rollout-worker limits stage: concurrency, request rate, token budget and the shared 429 gate.

Every request the client sends passes through one :class:`Limiter`, in this order:

1. the **429 gate**: one shared deadline; after a 429 every sender pauses until it passes
   (it can be extended while closed, and it is checked once more just before a permit is
   granted, so requests already queued behind a slot or budget pause too);
2. a **concurrency slot**: at most ``max_concurrency`` permits at once, or the adaptive
   (AIMD) limit; waiters are served first come, first served;
3. the **request rate**: an :class:`aiolimiter.AsyncLimiter` of ``rpm`` per minute;
4. the **token budget**: a :class:`TokenBudget` of ``tpm`` tokens per minute, reserved from
   an estimate before sending and settled with the real usage afterwards.

Both buckets hold ``LimitsConfig.burst_seconds`` of their rate (1 s by default: providers
enforce per-minute limits over shorter windows, and a minute's allowance sent at once after a
quiet spell or a 429 pause drew 55% 429s from a server with a 1 s window, 0.2% paced).

Time comes from one clock: by default the running event loop's ``time()``; tests inject a
virtual clock (or run on a virtual-time loop) and never sleep. aiolimiter always reads the
loop's ``time()``, so an injected clock must advance with the loop's (an offset is fine).
A limiter belongs to the event loop it is first used on.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiolimiter import AsyncLimiter

from ..config.schema import LimitsConfig
from ..errors import ClientClosedError

__all__ = ("Limiter", "LimiterStatistics", "Permit", "TokenBudget")

Clock = Callable[[], float]

_GATE_SLACK = 1e-6
"""Seconds by which a gate timer may fire early (float rounding) and still open the gate."""


class _Timing:
    """The clock and the event loop a limiter uses, both bound lazily on first use."""

    __slots__ = ("_clock", "_loop")

    def __init__(self, clock: Clock | None) -> None:
        self._clock = clock  # injected clock, or None for the loop's time()
        self._loop: asyncio.AbstractEventLoop | None = None  # bound on first use

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return self.loop().time()

    def now_or_none(self) -> float | None:
        """The time, or None outside any loop before first use (no timed state exists yet)."""
        if self._clock is None and self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
        return self.now()

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Schedule ``callback`` at clock time ``when`` (converted to a delay on the loop)."""
        return self.loop().call_later(max(0.0, when - self.now()), callback)


def _granted(fut: asyncio.Future[None]) -> bool:
    """Whether a waiter's future was resolved with a grant (not cancelled, not failed)."""
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _discard(queue: deque[Any], item: object) -> None:
    with suppress(ValueError):
        queue.remove(item)


class TokenBudget:
    """Tokens-per-minute budget with reserve-then-settle: reserve an estimate, refund the rest.

    Example::

        budget = TokenBudget(90_000)            # 90k tokens per minute
        await budget.reserve(estimate)          # waits (FIFO) until the tokens are there
        response = await send(...)
        used = response.usage.total_tokens
        if used < estimate:
            budget.refund(estimate - used)      # unused tokens go back at once
        else:
            budget.charge(used - estimate)      # an underestimate is charged (may go into debt)

    A bucket of ``capacity`` tokens (``burst_seconds`` of the rate: the whole minute by
    default) refilled continuously at ``tokens_per_minute / 60`` per second, starting full.
    Reservations are served strictly in arrival order: a large request at the head blocks
    smaller ones behind it, so it cannot be starved. A request larger than the
    whole capacity is admitted once the bucket is full and drives the level negative (debt),
    which the requests behind it wait out; it never fails. Unlike :class:`aiolimiter.AsyncLimiter`
    tokens can be given back, and no request is too large.
    """

    __slots__ = (
        "_closed",
        "_eps",
        "_handle",
        "_last",
        "_level",
        "_timing",
        "_waiters",
        "capacity",
        "rate",
    )

    capacity: float  #: Bucket size in tokens (``burst_seconds`` of the rate).
    rate: float  #: Refill rate in tokens per second.

    def __init__(
        self, tokens_per_minute: float, *, burst_seconds: float = 60.0, clock: Clock | None = None
    ) -> None:
        if not (math.isfinite(tokens_per_minute) and tokens_per_minute > 0):
            raise ValueError(
                f"tokens_per_minute must be a positive number, got {tokens_per_minute!r}"
            )
        if not (math.isfinite(burst_seconds) and burst_seconds > 0):
            raise ValueError(f"burst_seconds must be a positive number, got {burst_seconds!r}")
        self.rate = float(tokens_per_minute) / 60.0
        self.capacity = self.rate * burst_seconds
        self._level = self.capacity  # tokens available now; negative is debt
        self._last: float | None = None  # clock time of the last refill; None before first use
        self._eps = 1e-9 * self.capacity  # float slack when comparing a level with a need
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # FIFO (tokens, future)
        self._handle: asyncio.TimerHandle | None = None  # wakes the head when it can be served
        self._timing = _Timing(clock)  # clock and loop, bound on first use
        self._closed = False  # closed: waiters failed, new reservations refused

    def __repr__(self) -> str:
        return (
            f"<TokenBudget capacity={self.capacity:g} level={self._level:.1f} "
            f"waiters={len(self._waiters)}>"
        )

    @property
    def waiting(self) -> int:
        """Reservations queued and not yet served (cancelled ones may linger until skipped)."""
        return sum(1 for _, fut in self._waiters if not fut.done())

    def level(self) -> float:
        """Tokens available now; negative while in debt."""
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        return self._level

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
        self._last = now if self._last is None else max(self._last, now)

    def _fits(self, tokens: int) -> bool:
        # a request larger than the bucket needs a full bucket, then goes into debt
        return self._level + self._eps >= min(tokens, self.capacity)

    async def reserve(self, tokens: int) -> None:
        """Take ``tokens`` from the budget, waiting in FIFO order until they are available.

        Cancellation-safe: a cancelled reservation takes nothing and holds nobody up.

        Raises:
            ClientClosedError: the budget was closed before or while waiting.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        if self._closed:
            raise ClientClosedError("token budget is closed")
        self._refill(self._timing.now())
        if not self._waiters and self._fits(tokens):
            self._level -= tokens
            return
        fut = self._timing.loop().create_future()
        self._waiters.append((tokens, fut))
        self._wake()
        try:
            await fut
        except BaseException:
            if _granted(fut):
                self.refund(tokens)  # granted, then cancelled before resuming: give it back
            else:
                _discard(self._waiters, (tokens, fut))
                self._wake()  # the head may have left: let the next one in
            raise

    def refund(self, tokens: float) -> None:
        """Give back ``tokens`` reserved but not used (the level never exceeds capacity)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self._level = min(self.capacity, self._level + tokens)
        self._wake()

    def charge(self, tokens: float) -> None:
        """Take ``tokens`` used beyond the reservation; the level may go negative (debt)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self._level -= tokens
        self._wake()

    def _wake(self) -> None:
        """Serve queued reservations in order while they fit; else time the head's wake-up."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._closed:
            return
        queue = self._waiters
        while queue:
            tokens, fut = queue[0]
            if fut.done():  # cancelled while queued
                queue.popleft()
                continue
            now = self._timing.now()
            self._refill(now)
            if self._fits(tokens):
                queue.popleft()
                self._level -= tokens
                fut.set_result(None)
                continue
            wake_at = now + (min(tokens, self.capacity) - self._level) / self.rate
            self._handle = self._timing.call_at(wake_at, self._wake)
            return

    def close(self) -> None:
        """Fail every queued reservation with :class:`ClientClosedError`; refuse new ones."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ClientClosedError("token budget is closed"))


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A frozen snapshot of a :class:`Limiter`'s state, from :meth:`Limiter.statistics`."""

    in_flight: int
    """Concurrency slots held: granted permits plus acquisitions past the slot stage."""
    concurrency_limit: int
    """Current concurrency limit (max_concurrency, or the adaptive limit)."""
    waiting: int
    """Acquisitions not yet granted, at any stage."""
    tokens_reserved: float
    """Tokens reserved by permits still open and not yet settled."""
    tokens_available: float
    """Tokens in the TPM bucket now (0 while in debt; inf without a TPM limit)."""
    token_debt: float
    """Tokens the TPM bucket is below zero, to be waited out."""
    gate_open_at: float | None
    """Clock time until which all senders are paused; None when the gate is open."""
    rate_limited: int
    """429s reported through :meth:`Limiter.on_rate_limited`."""
    gate_waits: int
    """Acquisitions that waited on the 429 gate."""
    requests_admitted: int
    """Requests admitted: the sum of ``requests`` over granted permits."""


class Permit:
    """The right to send one request (or ``requests`` fanned-out requests) now.

    Obtained from ``async with limiter.permit(est_tokens) as permit``; call :meth:`settle`
    with the real token usage once it is known.
    """

    __slots__ = ("_active", "_limiter", "_seq", "_settled", "requests", "reserved", "waited")

    reserved: int  #: Tokens reserved from the TPM budget (the estimate).
    requests: int  #: Request units taken from the RPM limiter.
    waited: float  #: Clock seconds spent acquiring (gate, slot, rate and tokens).

    def __init__(
        self, limiter: Limiter, reserved: int, requests: int, waited: float, seq: int
    ) -> None:
        self._limiter = limiter  # the limiter that granted it
        self.reserved = reserved
        self.requests = requests
        self.waited = waited
        self._seq = seq  # admission order, to tell requests sent before an AIMD decrease
        self._settled = False  # settle() was called
        self._active = True  # inside the `async with` block

    def __repr__(self) -> str:
        state = "settled" if self._settled else "open"
        return f"<Permit #{self._seq} reserved={self.reserved} {state}>"

    @property
    def settled(self) -> bool:
        """Whether :meth:`settle` was called."""
        return self._settled

    def settle(self, used_tokens: int) -> None:
        """Record the real usage: refund ``reserved - used_tokens``, or charge the excess as debt.

        Only the first call counts; later calls are ignored. May be called after the block
        exits. Call ``settle(0)`` when a request failed without using tokens.
        """
        if used_tokens < 0:
            raise ValueError(f"used_tokens must be >= 0, got {used_tokens!r}")
        if self._settled:
            return
        self._settled = True
        self._limiter._settle(self, used_tokens)


class _PermitContext(AbstractAsyncContextManager[Permit]):
    """What :meth:`Limiter.permit` returns: acquires on enter, releases the slot on exit."""

    __slots__ = ("_est", "_limiter", "_permit", "_requests")

    def __init__(self, limiter: Limiter, est_tokens: int, requests: int) -> None:
        self._limiter = limiter  # where to acquire
        self._est = est_tokens  # tokens to reserve
        self._requests = requests  # RPM units to take
        self._permit: Permit | None = None  # the granted permit while inside the block

    async def __aenter__(self) -> Permit:
        if self._permit is not None:
            raise RuntimeError("a permit context cannot be entered twice")
        self._permit = await self._limiter._acquire(self._est, self._requests)
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._permit is not None and self._permit._active:
            self._limiter._release(self._permit)


class Limiter:
    """Client-side limits for one endpoint: 429 gate, concurrency, RPM and TPM.

    Example::

        async with Limiter(LimitsConfig(rpm=500, tpm=90_000, max_concurrency=16)) as limiter:
            async with limiter.permit(est_tokens=prompt_tokens + max_tokens) as permit:
                response = await send(request)
                if response.status == 429:
                    limiter.on_rate_limited(retry_after_seconds, permit=permit)
                else:
                    limiter.on_success()
                permit.settle(response.usage.total_tokens if response.ok else 0)

    Acquisition order: the shared 429 gate, a concurrency slot (FIFO), the request rate
    (aiolimiter, ``requests`` units), then ``est_tokens`` from the token budget; the gate is
    checked once more before the permit is granted. On exit the slot is released; a permit
    never settled keeps its whole reservation (counted as used).

    ``on_rate_limited`` closes the gate for every sender until ``now + retry_after`` (or a
    default backoff of ``gate_backoff`` seconds, doubling for each new 429 episode without a
    success in between, capped at ``gate_backoff_cap``). With ``cfg.adaptive`` the
    concurrency limit is AIMD: it starts at ``max_concurrency``, grows by 1 after as many
    successes as the current limit, never above ``max_concurrency``, and halves (not below 1)
    on a 429 or a timeout. A congestion event halves it once: reports from requests admitted
    before the last decrease are ignored. Pass ``permit=`` to say which request a report is
    about; without it, a report is ignored while any request admitted before the last
    decrease is still open, so report inside the ``async with`` block.

    The limiter is itself an async context manager; closing it fails every waiter with
    :class:`ClientClosedError`, and ``permit()`` raises it afterwards. Open permits stay
    valid until their blocks exit.
    """

    __slots__ = (
        "_backoff_base",
        "_backoff_cap",
        "_budget",
        "_cfg_refund",
        "_close_fut",
        "_closed",
        "_decrease_seq",
        "_gate_deadline",
        "_gate_handle",
        "_gate_strikes",
        "_gate_waiters",
        "_gate_waits",
        "_in_flight",
        "_limit",
        "_max",
        "_old_open",
        "_open_permits",
        "_rate_limited",
        "_requests_admitted",
        "_reserved",
        "_rpm",
        "_seq",
        "_slot_waiters",
        "_successes",
        "_timing",
        "_waiting",
        "adaptive",
    )

    adaptive: bool  #: Whether the concurrency limit follows AIMD.

    def __init__(
        self,
        cfg: LimitsConfig,
        *,
        clock: Clock | None = None,
        gate_backoff: float = 1.0,
        gate_backoff_cap: float = 60.0,
    ) -> None:
        if cfg.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {cfg.max_concurrency!r}")
        if not 0 < gate_backoff <= gate_backoff_cap:
            raise ValueError("need 0 < gate_backoff <= gate_backoff_cap")
        self.adaptive = cfg.adaptive
        self._timing = _Timing(clock)  # clock and loop, bound on first use
        self._max = cfg.max_concurrency  # hard cap on the concurrency limit
        self._limit = cfg.max_concurrency  # current concurrency limit (AIMD moves it)
        self._in_flight = 0  # slots held, including acquisitions still in later stages
        self._slot_waiters: deque[asyncio.Future[None]] = deque()  # FIFO queue for a slot
        # request-rate leaky bucket (reads the loop's time, not the injected clock)
        burst = cfg.burst_seconds  # the buckets hold this many seconds of rate
        self._rpm = AsyncLimiter(cfg.rpm * burst / 60.0, burst) if cfg.rpm else None
        # tokens-per-minute budget with refunds
        self._budget = TokenBudget(cfg.tpm, burst_seconds=burst, clock=clock) if cfg.tpm else None
        self._cfg_refund = cfg.tpm_refund  # give back unused reservations on settle
        self._gate_deadline: float | None = None  # clock time the 429 gate opens; None: open
        self._gate_waiters: deque[asyncio.Future[None]] = deque()  # paused senders, in order
        self._gate_handle: asyncio.TimerHandle | None = None  # the one timer that opens the gate
        self._gate_strikes = 0  # 429 episodes since the last success (grows the default backoff)
        self._backoff_base = gate_backoff  # first default pause, seconds
        self._backoff_cap = gate_backoff_cap  # longest default pause, seconds
        self._successes = 0  # successes since the last additive increase
        self._seq = 0  # sequence number of the next permit granted
        self._decrease_seq = 0  # permits numbered below this were admitted before the decrease
        self._old_open = 0  # permits from before the last decrease still open
        self._open_permits = 0  # granted permits whose blocks have not exited
        self._waiting = 0  # acquisitions in progress
        self._reserved = 0  # tokens reserved by open, unsettled permits
        self._rate_limited = 0  # 429s reported
        self._gate_waits = 0  # acquisitions that waited on the gate
        self._requests_admitted = 0  # sum of `requests` over granted permits
        self._closed = False  # closed: no new permits
        self._close_fut: asyncio.Future[None] | None = None  # resolved on close, for rpm waits

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Limiter {state} in_flight={self._in_flight}/{self._limit} waiting={self._waiting}>"
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Fail every waiter with :class:`ClientClosedError`; later ``permit()`` calls raise it."""
        if self._closed:
            return
        self._closed = True
        for queue in (self._slot_waiters, self._gate_waiters):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_exception(ClientClosedError("limiter is closed"))
        if self._gate_handle is not None:
            self._gate_handle.cancel()
            self._gate_handle = None
        if self._close_fut is not None and not self._close_fut.done():
            self._close_fut.set_result(None)
        if self._budget is not None:
            self._budget.close()

    async def aclose(self) -> None:
        """:meth:`close`, for code that expects an awaitable close."""
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("limiter is closed")

    # ------------------------------------------------------------------ acquiring

    def permit(
        self, est_tokens: int = 0, *, requests: int = 1
    ) -> AbstractAsyncContextManager[Permit]:
        """An async context manager granting a :class:`Permit` once all limits allow it.

        ``est_tokens`` is reserved from the TPM budget (prompt plus max completion tokens is
        a safe estimate); ``requests`` is how many requests the permit covers for RPM (a
        fan-out of n single-choice requests takes n). It holds one concurrency slot.

        Raises:
            ClientClosedError: the limiter is closed (now, or while waiting).
        """
        self._check_open()
        if est_tokens < 0:
            raise ValueError(f"est_tokens must be >= 0, got {est_tokens!r}")
        if requests < 1:
            raise ValueError(f"requests must be >= 1, got {requests!r}")
        return _PermitContext(self, est_tokens, requests)

    async def _acquire(self, est_tokens: int, requests: int) -> Permit:
        self._check_open()
        started = self._timing.now()
        self._waiting += 1
        have_slot = have_tokens = False
        try:
            gate_waited = await self._wait_gate()
            await self._acquire_slot()
            have_slot = True
            if self._rpm is not None:
                await self._acquire_rate(requests)
            if self._budget is not None:
                await self._budget.reserve(est_tokens)
                have_tokens = True
            # a 429 may have closed the gate while we queued: pause with the slot in hand
            gate_waited = await self._wait_gate() or gate_waited
            self._check_open()
        except BaseException:
            if have_tokens and self._budget is not None:
                self._budget.refund(est_tokens)
            if have_slot:
                self._release_slot()
            raise
        finally:
            self._waiting -= 1
        if gate_waited:
            self._gate_waits += 1
        self._requests_admitted += requests
        self._reserved += est_tokens
        permit = Permit(self, est_tokens, requests, self._timing.now() - started, self._seq)
        self._seq += 1
        self._open_permits += 1
        return permit

    async def _wait_gate(self) -> bool:
        """Sleep until the shared 429 deadline passes, re-checking it; True if we waited."""
        waited = False
        while True:
            self._check_open()
            deadline = self._gate_deadline
            if deadline is None or self._timing.now() >= deadline:
                return waited
            waited = True
            fut = self._timing.loop().create_future()
            self._gate_waiters.append(fut)
            try:
                await fut
            except BaseException:
                _discard(self._gate_waiters, fut)
                raise

    async def _acquire_slot(self) -> None:
        self._check_open()
        if not self._slot_waiters and self._in_flight < self._limit:
            self._in_flight += 1
            return
        fut = self._timing.loop().create_future()
        self._slot_waiters.append(fut)
        try:
            await fut  # the slot is counted by whoever resolves this future
        except BaseException:
            if _granted(fut):
                self._release_slot()  # granted, then cancelled before resuming: pass it on
            else:
                _discard(self._slot_waiters, fut)
            raise

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._wake_slots()

    def _wake_slots(self) -> None:
        """Hand free slots to the waiters at the front of the queue."""
        queue = self._slot_waiters
        while queue and self._in_flight < self._limit:
            fut = queue.popleft()
            if fut.done():  # cancelled while queued
                continue
            self._in_flight += 1
            fut.set_result(None)

    async def _acquire_rate(self, requests: int) -> None:
        rpm = self._rpm
        assert rpm is not None
        remaining = float(requests)
        while remaining > 0:
            # aiolimiter refuses amounts above its capacity: take a large fan-out in pieces
            chunk = min(remaining, rpm.max_rate)
            if rpm.has_capacity(chunk):
                await rpm.acquire(chunk)  # returns at once
            else:
                await self._unless_closed(rpm.acquire(chunk))
            remaining -= chunk

    async def _unless_closed(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro``, raising :class:`ClientClosedError` if the limiter closes first."""
        loop = self._timing.loop()
        if self._close_fut is None:
            self._close_fut = loop.create_future()
        task = loop.create_task(coro)
        try:
            await asyncio.wait((task, self._close_fut), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise ClientClosedError("limiter is closed")
        task.result()

    def _release(self, permit: Permit) -> None:
        permit._active = False
        self._open_permits -= 1
        if not permit._settled:
            self._reserved -= permit.reserved  # never settled: the reservation counts as used
        if permit._seq < self._decrease_seq:
            self._old_open -= 1
        self._release_slot()

    def _settle(self, permit: Permit, used: int) -> None:
        if permit._active:
            self._reserved -= permit.reserved
        if self._budget is not None:
            if used < permit.reserved and self._cfg_refund:
                self._budget.refund(permit.reserved - used)
            elif used > permit.reserved:
                self._budget.charge(used - permit.reserved)

    # ------------------------------------------------------------------ feedback

    def on_rate_limited(
        self, retry_after: float | None = None, *, permit: Permit | None = None
    ) -> None:
        """A request got HTTP 429: pause every sender until ``now + retry_after``.

        Without ``retry_after`` (or with a non-finite one) the pause is the default backoff,
        doubling per 429 episode until a success. A later deadline extends the gate; an
        earlier one never shortens it. Adaptive concurrency halves (once per congestion event).
        """
        now = self._timing.now()
        self._rate_limited += 1
        if self._gate_deadline is None or now >= self._gate_deadline:
            self._gate_strikes += 1  # a new episode: the gate was open when this 429 arrived
        if retry_after is None or not math.isfinite(retry_after):
            exponent = min(self._gate_strikes - 1, 32)
            delay = min(self._backoff_cap, self._backoff_base * 2.0**exponent)
        else:
            delay = max(0.0, retry_after)
        self._extend_gate(now + delay)
        self._decrease(permit)

    def on_timeout(self, *, permit: Permit | None = None) -> None:
        """A request timed out: adaptive concurrency halves (once per congestion event)."""
        self._decrease(permit)

    def on_success(self) -> None:
        """A request succeeded: resets the default 429 backoff; adaptive concurrency grows."""
        self._gate_strikes = 0
        if not self.adaptive or self._limit >= self._max:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._wake_slots()

    def _decrease(self, permit: Permit | None) -> None:
        if not self.adaptive:
            return
        if permit is not None:
            if permit._seq < self._decrease_seq:
                return  # sent before the last decrease: same congestion event
        elif self._old_open > 0:
            return  # probably one of the requests sent before the last decrease
        self._limit = max(1, self._limit // 2)
        self._successes = 0
        self._decrease_seq = self._seq
        self._old_open = self._open_permits

    def _extend_gate(self, deadline: float) -> None:
        current = self._gate_deadline
        if current is not None and current >= deadline:
            return
        self._gate_deadline = deadline
        if self._closed:
            return
        if self._gate_handle is not None:
            self._gate_handle.cancel()
        self._gate_handle = self._timing.call_at(deadline, self._gate_tick)

    def _gate_tick(self) -> None:
        """The gate timer fired: open the gate and wake every paused sender."""
        self._gate_handle = None
        deadline = self._gate_deadline
        if deadline is None:
            return
        now = self._timing.now()
        if now + _GATE_SLACK < deadline:  # an injected clock ran slower than the loop's
            self._gate_handle = self._timing.call_at(deadline, self._gate_tick)
            return
        self._gate_deadline = None
        waiters, self._gate_waiters = self._gate_waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the limiter's state."""
        now = self._timing.now_or_none()
        gate = self._gate_deadline
        gate_open_at = gate if gate is not None and now is not None and now < gate else None
        if self._budget is None:
            available, debt = math.inf, 0.0
        else:
            level = self._budget.level()
            available, debt = max(level, 0.0), max(-level, 0.0)
        return LimiterStatistics(
            in_flight=self._in_flight,
            concurrency_limit=self._limit,
            waiting=self._waiting,
            tokens_reserved=float(self._reserved),
            tokens_available=available,
            token_debt=debt,
            gate_open_at=gate_open_at,
            rate_limited=self._rate_limited,
            gate_waits=self._gate_waits,
            requests_admitted=self._requests_admitted,
        )
