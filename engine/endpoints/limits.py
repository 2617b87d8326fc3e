"""Endpoint stage: concurrency, request rate, token budget and the shared 429 gate.

Every request the client sends passes through one :class:`Limiter`, in this order:

1. the **429 gate** (:class:`~engine.endpoints.gate.RateLimitGate`): one shared deadline;
   after a 429 every sender pauses until it passes (it is checked once more just before a
   permit is granted, so requests already queued behind a slot or budget pause too);
2. a **concurrency slot**: at most ``max_concurrency`` permits at once, or the adaptive
   (AIMD) limit; waiters are served first come, first served;
3. the **request rate**: a :class:`~engine.endpoints.budget.TokenBudget` of ``rpm``
   requests per minute;
4. the **token budget**: a :class:`~engine.endpoints.budget.TokenBudget` of ``tpm`` tokens
   per minute, reserved from an estimate before sending and settled with the real usage
   afterwards.

Both buckets start with ``LimitsConfig.burst_seconds`` of their rate (1 s by default): a
minute's allowance sent at once draws 429 storms from a server that enforces its per-minute
limit over a second. With ``LimitsConfig.learn_window`` (the default) each bucket then sizes
itself to the window the server enforces (:mod:`engine.endpoints.window`): from the
``x-ratelimit-*`` headers of its responses when it sends them, else by probing for a larger
burst until a 429 says where the window ends; never beyond ``max_burst_seconds`` of the
configured rate. The client reports each answer to the permit it held
(:meth:`Permit.answered`). benchmarks/README.md has the measurements against a minute-window
and a one-second-window server.

Time comes from one clock (:class:`~engine.endpoints.timing.Timing`): the running loop's by
default, or an injected one. A limiter belongs to the event loop it is first used on.

What the client needs of a limiter is :class:`LimiterProtocol` (and of a permit
:class:`PermitProtocol`), so a test can hand it a limiter that only records.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from ..config.sections import LimitsConfig
from ..errors import ClientClosedError
from .budget import TokenBudget
from .gate import RateLimitGate
from .timing import Clock, Timing, discard, granted
from .window import READ_GAP, WindowLearner, rate_headers_of

__all__ = ("Limiter", "LimiterProtocol", "LimiterStatistics", "Permit", "PermitProtocol")


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
    request_window: float | None = None
    """Seconds of the rpm the request bucket holds now (learned); None without an rpm."""
    token_window: float | None = None
    """Seconds of the tpm the token bucket holds now (learned); None without a tpm."""
    window_learning: str | None = None
    """How the windows are learned: ``"headers"``, ``"probing"``, ``"settled"`` (probing
    ended by a 429), ``"unknown"`` (no answer yet), None when learning is off or no rate
    limit is set; per bucket as ``requests/tokens`` when they differ."""


class PermitProtocol(Protocol):
    """What the client does with a permit: settle it with the tokens its request used."""

    def settle(self, used_tokens: int) -> None:
        """Record the real usage (``0`` when the request failed without using tokens)."""


class LimiterProtocol(Protocol):
    """What :class:`~engine.endpoints.client.Client` needs of a limiter.

    :class:`Limiter` is the real one; tests pass one that grants at once and records.
    """

    def permit(
        self, est_tokens: int = 0, *, requests: int = 1
    ) -> AbstractAsyncContextManager[PermitProtocol]:
        """An async context manager granting a permit once the limits allow it."""

    def on_rate_limited(
        self, retry_after: float | None = None, *, permit: PermitProtocol | None = None
    ) -> None:
        """A request got HTTP 429: pause every sender for ``retry_after`` seconds."""

    def on_timeout(self, *, permit: PermitProtocol | None = None) -> None:
        """A request timed out."""

    def on_success(self) -> None:
        """A request succeeded."""

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the limiter's state."""

    def gate_wait(self) -> float:
        """Seconds until the shared 429 gate opens; 0 while it is open."""


class Permit:
    """The right to send one request (or ``requests`` fanned-out requests) now.

    Obtained from ``async with limiter.permit(est_tokens) as permit``; call :meth:`settle`
    with the real token usage once it is known. Its admission number tells the limiter
    whether a report about it belongs to a congestion event already answered; it is active
    while its ``async with`` block runs.

    Attributes:
        reserved: tokens reserved from the TPM budget (the estimate).
        requests: request units taken from the RPM limiter.
        waited: clock seconds spent acquiring (gate, slot, rate and tokens).
    """

    __slots__ = ("_active", "_at", "_limiter", "_marks", "_open", "_seq", "_settled",
                 "requests", "reserved", "waited")  # fmt: skip

    reserved: int
    requests: int
    waited: float

    def __init__(
        self, limiter: Limiter, reserved: int, requests: int, waited: float, seq: int
    ) -> None:
        self._limiter = limiter
        self.reserved = reserved
        self.requests = requests
        self.waited = waited
        self._seq = seq
        self._settled = False
        self._active = True
        # for window learning: when it was granted, and each bucket's grant count after it
        self._at = 0.0
        self._marks: tuple[float, ...] = ()
        self._open = False  # in flight for the window learning (granted, not answered)

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

    def answered(self, headers: Mapping[str, str] | None, ok: bool) -> None:
        """The server answered this permit's request: ``headers`` are the response's, ``ok``
        whether it succeeded. The limiter learns the server's window from them (the
        ``x-ratelimit-*`` counts, or a success after a probe step); a 429 is reported
        through :meth:`Limiter.on_rate_limited` as well. Call it inside the permit's
        ``async with`` block, once: later calls, and calls after the block, are ignored (a
        permit's request is in flight until it is answered or its block exits)."""
        self._limiter._answered(self, headers, ok)


class _PermitContext(AbstractAsyncContextManager[Permit]):
    """What :meth:`Limiter.permit` returns: acquires on enter, releases the slot on exit.

    It reserves ``est_tokens`` and takes ``requests`` RPM units; the granted permit is held
    while inside the block.
    """

    __slots__ = ("_est", "_limiter", "_permit", "_requests")

    def __init__(self, limiter: Limiter, est_tokens: int, requests: int) -> None:
        self._limiter = limiter
        self._est = est_tokens
        self._requests = requests
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        if self._permit is not None:
            raise RuntimeError("a permit context cannot be entered twice")
        limiter = self._limiter
        permit = limiter.permit_now(self._est, requests=self._requests)
        if permit is None:
            permit = await limiter._acquire(self._est, self._requests)
        self._permit = permit
        return permit

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
    (``requests`` units), then ``est_tokens`` from the token budget; the gate is
    checked once more before the permit is granted. On exit the slot is released; a permit
    never settled keeps its whole reservation (counted as used).

    ``on_rate_limited`` closes the gate for every sender until ``now + retry_after`` (or a
    default backoff of ``gate_backoff`` seconds, doubling for each new 429 episode without a
    success in between, capped at ``gate_backoff_cap``). With ``limits.adaptive`` the
    concurrency limit is AIMD: it starts at ``max_concurrency``, grows by 1 after as many
    successes as the current limit, never above ``max_concurrency``, and halves (not below 1)
    on a 429 or a timeout. A congestion event halves it once: reports from requests admitted
    before the last decrease are ignored. Pass ``permit=`` to say which request a report is
    about; without it, a report is ignored while any request admitted before the last
    decrease is still open, so report inside the ``async with`` block.

    The limiter is itself an async context manager; closing it (:meth:`aclose`) fails every
    waiter with :class:`ClientClosedError`, and ``permit()`` raises it afterwards. Open permits
    stay valid until their blocks exit.

    Attributes:
        adaptive: whether the concurrency limit follows AIMD.
    """

    __slots__ = (
        "_budget",
        "_closed",
        "_decrease_seq",
        "_gate",
        "_gate_waits",
        "_in_flight",
        "_learning",
        "_limit",
        "_max",
        "_old_open",
        "_open_permits",
        "_quiet_until",
        "_rate_limited",
        "_refund",
        "_requests_admitted",
        "_reserved",
        "_rpm",
        "_seq",
        "_slot_waiters",
        "_successes",
        "_timing",
        "_waiting",
        "_windows",
        "adaptive",
    )

    adaptive: bool

    def __init__(
        self,
        limits: LimitsConfig,
        *,
        clock: Clock | None = None,
        gate_backoff: float = 1.0,
        gate_backoff_cap: float = 60.0,
    ) -> None:
        if limits.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {limits.max_concurrency!r}")
        if not 0 < gate_backoff <= gate_backoff_cap:
            raise ValueError("need 0 < gate_backoff <= gate_backoff_cap")
        self.adaptive = limits.adaptive
        self._timing = Timing(clock)
        # Concurrency: `_limit` is the current limit (AIMD moves it, never above `_max`);
        # `_in_flight` counts slots held, acquisitions still in later stages included.
        self._max = limits.max_concurrency
        self._limit = limits.max_concurrency
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # The buckets start with `burst_seconds` of their rate; learning resizes them, up to
        # `max_burst_seconds` (their ceiling).
        burst = limits.burst_seconds
        most = max(burst, limits.max_burst_seconds) if limits.learn_window else burst
        self._rpm = (
            TokenBudget(limits.rpm, burst_seconds=burst, max_burst_seconds=most, clock=clock)
            if limits.rpm
            else None
        )
        self._budget = (
            TokenBudget(limits.tpm, burst_seconds=burst, max_burst_seconds=most, clock=clock)
            if limits.tpm
            else None
        )
        # One learner per bucket, in the order of the permits' marks: requests, tokens.
        learners: list[WindowLearner | None] = [None, None]
        if limits.learn_window:
            if self._rpm is not None:
                learners[0] = WindowLearner(self._rpm, "requests")
            if self._budget is not None:
                learners[1] = WindowLearner(self._budget, "tokens")
        self._windows = tuple(learners)
        self._learning = any(w is not None for w in learners)
        self._quiet_until = -math.inf  # successful answers before this are not read
        self._refund = limits.tpm_refund
        self._gate = RateLimitGate(self._timing, gate_backoff, gate_backoff_cap)
        # AIMD: permits are numbered in admission order; those numbered below
        # `_decrease_seq` were admitted before the last decrease (`_old_open` of them are
        # still open), so their reports belong to the congestion event already answered.
        self._successes = 0
        self._seq = 0
        self._decrease_seq = 0
        self._old_open = 0
        self._open_permits = 0
        # Counters for statistics(); `_reserved` is tokens held by open, unsettled permits.
        self._waiting = 0
        self._reserved = 0
        self._rate_limited = 0
        self._gate_waits = 0
        self._requests_admitted = 0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Limiter {state} in_flight={self._in_flight}/{self._limit} waiting={self._waiting}>"
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
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
        await self.aclose()

    async def aclose(self) -> None:
        """Fail every waiter with :class:`ClientClosedError`; later ``permit()`` calls raise it.

        Idempotent. Open permits stay valid until their blocks exit.
        """
        if self._closed:
            return
        self._closed = True
        while self._slot_waiters:
            fut = self._slot_waiters.popleft()
            if not fut.done():
                fut.set_exception(ClientClosedError("limiter is closed"))
        self._gate.shut()
        if self._rpm is not None:
            self._rpm.close()
        if self._budget is not None:
            self._budget.close()

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
        rpm_mark = tok_mark = 0.0
        rpm_taken = [0]  # request units taken so far (a fan-out takes them in pieces)
        try:
            gate_waited = await self._gate.wait()
            await self._acquire_slot()
            have_slot = True
            if self._rpm is not None:
                rpm_mark = await self._acquire_rate(requests, rpm_taken)
            if self._budget is not None:
                tokens = self._windows[1]
                if tokens is not None:
                    tokens.probe(est_tokens)
                tok_mark = await self._budget.reserve(est_tokens)
                have_tokens = True
            # a 429 may have closed the gate while we queued: pause with the slot in hand
            gate_waited = await self._gate.wait() or gate_waited
            self._check_open()
        except BaseException:
            if have_tokens and self._budget is not None:
                self._budget.refund(est_tokens)
            if have_slot:
                self._release_slot()
            # taken but never sent: not in flight for the window learning
            rpm_w, tok_w = self._windows
            if rpm_w is not None:
                rpm_w.closed += rpm_taken[0]
            if tok_w is not None and have_tokens:
                tok_w.closed += est_tokens
            raise
        finally:
            self._waiting -= 1
        if gate_waited:
            self._gate_waits += 1
        now = self._timing.now()
        return self._grant(est_tokens, requests, now - started, now, rpm_mark, tok_mark)

    def permit_now(self, est_tokens: int = 0, *, requests: int = 1) -> Permit | None:
        """The uncontended path in one call: a permit when every limit admits the request at
        once (no 429 pause, a free slot, room in both buckets, nobody queued anywhere), else
        None and nothing taken (:meth:`permit` then queues as usual). The window learners
        are asked to probe first, as on the queued path. A permit from here is held until
        :meth:`release` (what leaving a :meth:`permit` block does): the client's common
        path, without a context manager's two coroutines."""
        if self._closed or self._slot_waiters or self._in_flight >= self._limit:
            return None
        if est_tokens < 0 or requests < 1:
            return None  # permit() refuses these; the queued path says why
        now = self._timing.now()
        if self._gate.open_at(now) is not None:
            return None
        rpm, budget = self._rpm, self._budget
        rpm_w, tok_w = self._windows
        # A learner's probe can only grow a bucket that is not ready (senders queued, or no
        # room for the request), or settle one at its ceiling: asked only then, it does
        # exactly what it would do on every permit, without its calls on the common path.
        if rpm is not None:
            if requests > 1 and requests > max(1, math.floor(rpm.capacity)):
                return None  # paced in pieces by the queued path
            ready = rpm.ready(requests, now)
            if rpm_w is not None and (not ready or rpm.capacity >= rpm.max_capacity):
                rpm_w.probe(requests)
                ready = ready or rpm.ready(requests, now)
            if not ready:
                return None
        if budget is not None:
            ready = budget.ready(est_tokens, now)
            if tok_w is not None and (not ready or budget.capacity >= budget.max_capacity):
                tok_w.probe(est_tokens)
                ready = ready or budget.ready(est_tokens, now)
            if not ready:
                return None
        rpm_mark = rpm.take(requests) if rpm is not None else 0.0
        tok_mark = budget.take(est_tokens) if budget is not None else 0.0
        self._in_flight += 1
        return self._grant(est_tokens, requests, 0.0, now, rpm_mark, tok_mark)

    def _grant(
        self,
        est_tokens: int,
        requests: int,
        waited: float,
        now: float,
        rpm_mark: float,
        tok_mark: float,
    ) -> Permit:
        """The permit for units already taken (a slot, ``requests`` and ``est_tokens``)."""
        self._requests_admitted += requests
        self._reserved += est_tokens
        permit = Permit(self, est_tokens, requests, waited, self._seq)
        permit._at = now
        if self._learning:
            permit._marks = (rpm_mark, tok_mark)
            permit._open = True
        self._seq += 1
        self._open_permits += 1
        return permit

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
            if granted(fut):
                self._release_slot()  # granted, then cancelled before resuming: pass it on
            else:
                discard(self._slot_waiters, fut)
            raise

    def _release_slot(self) -> None:
        self._in_flight -= 1
        if self._slot_waiters:
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

    async def _acquire_rate(self, requests: int, taken: list[int]) -> float:
        """Take ``requests`` units from the request bucket; returns the bucket's mark after
        the last one and counts the units in ``taken[0]`` as they are taken."""
        rpm = self._rpm
        assert rpm is not None
        learner = self._windows[0]
        remaining = requests
        mark = 0.0
        while remaining > 0:
            # a fan-out larger than the bucket is paced in pieces of a full bucket, not sent
            # at once into debt
            chunk = min(remaining, max(1, math.floor(rpm.capacity)))
            if learner is not None:
                learner.probe(chunk)
            mark = await rpm.reserve(chunk)
            taken[0] += chunk
            remaining -= chunk
        return mark

    def _close_units(self, permit: Permit) -> None:
        """The permit's request is answered or over: its units are no longer in flight."""
        permit._open = False
        rpm, tokens = self._windows
        if rpm is not None:
            rpm.closed += permit.requests
        if tokens is not None:
            tokens.closed += permit.reserved

    def release(self, permit: Permit) -> None:
        """Release the slot of a permit from :meth:`permit_now`; later calls do nothing."""
        if permit._active:
            self._release(permit)

    def _release(self, permit: Permit) -> None:
        if permit._open:  # never answered (a timeout, a transport error, a cancellation)
            self._close_units(permit)
        permit._active = False
        self._open_permits -= 1
        if not permit._settled:
            self._reserved -= permit.reserved  # never settled: the reservation counts as used
        if permit._seq < self._decrease_seq:
            self._old_open -= 1
        self._in_flight -= 1  # the slot: what _release_slot does, without its call
        if self._slot_waiters:
            self._wake_slots()

    def _settle(self, permit: Permit, used: int) -> None:
        if permit._active:
            self._reserved -= permit.reserved
        if self._budget is not None:
            if used < permit.reserved and self._refund:
                self._budget.refund(permit.reserved - used)
            elif used > permit.reserved:
                self._budget.charge(used - permit.reserved)

    # ------------------------------------------------------------------ feedback

    def _answered(self, permit: Permit, headers: Mapping[str, str] | None, ok: bool) -> None:
        if not permit._open:
            return
        self._close_units(permit)
        if self._closed:
            return
        now = self._timing.now()
        if ok and now < self._quiet_until:
            return  # every bucket reads its headers, and read them moments ago
        rpm, tokens = self._windows
        at = permit._at
        headers = rate_headers_of(headers)  # once per answer, not once per bucket
        if rpm is not None:
            rpm.answered(headers, ok=ok, mark=permit._marks[0], granted_at=at, now=now)
        if tokens is not None:
            tokens.answered(headers, ok=ok, mark=permit._marks[1], granted_at=at, now=now)
        if (rpm is None or rpm.mode == "headers") and (tokens is None or tokens.mode == "headers"):
            self._quiet_until = now + READ_GAP

    def on_rate_limited(
        self, retry_after: float | None = None, *, permit: PermitProtocol | None = None
    ) -> None:
        """A request got HTTP 429: pause every sender until ``now + retry_after``.

        Without ``retry_after`` (or with a non-finite one) the pause is the default backoff,
        doubling per 429 episode until a success. A later deadline extends the gate; an
        earlier one never shortens it. Adaptive concurrency halves (once per congestion event).
        """
        self._rate_limited += 1
        self._gate.close_for(retry_after)
        marks, at = None, None
        if isinstance(permit, Permit) and permit._marks:
            marks, at = permit._marks, permit._at
        for i, learner in enumerate(self._windows):
            if learner is not None:
                learner.rate_limited(None if marks is None else marks[i], at)
        self._decrease(permit)

    def on_timeout(self, *, permit: PermitProtocol | None = None) -> None:
        """A request timed out: adaptive concurrency halves (once per congestion event)."""
        self._decrease(permit)

    def on_success(self) -> None:
        """A request succeeded: resets the default 429 backoff; adaptive concurrency grows."""
        self._gate.reset_backoff()
        if not self.adaptive or self._limit >= self._max:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._wake_slots()

    def _decrease(self, permit: PermitProtocol | None) -> None:
        """Halve the adaptive limit, once per congestion event.

        A report about a permit this limiter granted tells its event by the permit's
        admission number; any other report is judged by the requests still open.
        """
        if not self.adaptive:
            return
        if isinstance(permit, Permit):
            if permit._seq < self._decrease_seq:
                return  # sent before the last decrease: same congestion event
        elif self._old_open > 0:
            return  # probably one of the requests sent before the last decrease
        self._limit = max(1, self._limit // 2)
        self._successes = 0
        self._decrease_seq = self._seq
        self._old_open = self._open_permits

    # ------------------------------------------------------------------ statistics

    def gate_wait(self) -> float:
        """Seconds until the shared 429 gate opens; 0 while it is open (or before first use).

        The client fails a request at once when this wait would end past its deadline.
        """
        if self._gate._deadline is None:  # open (asked before every attempt)
            return 0.0
        now = self._timing.now_or_none()
        at = self._gate.open_at(now)
        return 0.0 if at is None or now is None else at - now

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the limiter's state."""
        now = self._timing.now_or_none()
        gate_open_at = self._gate.open_at(now)
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
            request_window=None if self._rpm is None else self._rpm.capacity / self._rpm.rate,
            token_window=None
            if self._budget is None
            else self._budget.capacity / self._budget.rate,
            window_learning=_learning(self._windows),
        )


def _learning(windows: tuple[WindowLearner | None, ...]) -> str | None:
    modes = [w.mode for w in windows if w is not None]
    if not modes:
        return None
    return modes[0] if len(set(modes)) == 1 else "/".join(modes)
