"""Endpoint stage: a per-minute token bucket whose reservations can be given back and whose
size and level can follow what a server says (the window learning of
:mod:`engine.endpoints.window`)."""

from __future__ import annotations

import asyncio
import math
from collections import deque

from ..errors import ClientClosedError
from .timing import Clock, Timing, discard, granted

__all__ = ("TokenBudget",)


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

    The capacity may change (:meth:`resize`) and the level may be set from outside
    (:meth:`sync`, :meth:`grow`), but never above a **ceiling**: the level a bucket of
    ``max_burst_seconds`` of the rate would have, charged with the same reservations. Whatever
    the caller is told, the tokens granted over any ``T`` seconds stay within
    ``rate * (T + max_burst_seconds)``.

    Attributes:
        taken: tokens taken by reservations so far (never decreases); :meth:`reserve`
            returns the count right after its own.
        abandoned: tokens of reservations granted, then cancelled before their caller
            resumed (given back, but counted in ``taken``).
        capacity: bucket size in tokens (``burst_seconds`` of the rate, until resized).
        max_capacity: the largest capacity (``max_burst_seconds`` of the rate).
        rate: refill rate in tokens per second.
        spilled: tokens the refill could not add because the bucket was full (never
            decreases): how long it sat full, in tokens. A server whose window is larger
            than the bucket banked them; the window learning probes for them.
        full_at: the clock time the bucket was last seen full (-inf: never since it
            started; it starts full); ``full_mark`` is :attr:`taken` then.
    """

    __slots__ = (
        "_ceiling",
        "_closed",
        "_eps",
        "_handle",
        "_last",
        "_level",
        "_timing",
        "_waiters",
        "abandoned",
        "capacity",
        "full_at",
        "full_mark",
        "max_capacity",
        "rate",
        "spilled",
        "taken",
    )

    abandoned: float
    taken: float
    capacity: float
    max_capacity: float
    rate: float
    spilled: float
    full_at: float
    full_mark: float

    def __init__(
        self,
        tokens_per_minute: float,
        *,
        burst_seconds: float = 60.0,
        max_burst_seconds: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not (math.isfinite(tokens_per_minute) and tokens_per_minute > 0):
            raise ValueError(
                f"tokens_per_minute must be a positive number, got {tokens_per_minute!r}"
            )
        if not (math.isfinite(burst_seconds) and burst_seconds > 0):
            raise ValueError(f"burst_seconds must be a positive number, got {burst_seconds!r}")
        if max_burst_seconds is not None and not (
            math.isfinite(max_burst_seconds) and max_burst_seconds > 0
        ):
            raise ValueError(
                f"max_burst_seconds must be a positive number, got {max_burst_seconds!r}"
            )
        self.rate = float(tokens_per_minute) / 60.0
        self.capacity = self.rate * burst_seconds
        self.max_capacity = max(self.capacity, self.rate * (max_burst_seconds or 0.0))
        # The level is the tokens available now (negative is debt), as of `_last`, the
        # clock time of the last refill (None before first use); `_eps` is the float slack
        # when comparing a level with a need. Reservations queue in FIFO order as
        # (tokens, future); `_handle` wakes the head when it can be served. `_ceiling` is the
        # level of a bucket of `max_capacity` charged alike: the level never exceeds it.
        self._level = self.capacity
        self._ceiling = self.max_capacity
        self._last: float | None = None
        self._eps = 1e-9 * self.capacity
        self._waiters: deque[tuple[int, asyncio.Future[float]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._timing = Timing(clock)
        self._closed = False
        self.taken = 0.0
        self.abandoned = 0.0
        self.spilled = 0.0
        self.full_at = -math.inf
        self.full_mark = 0.0

    def __repr__(self) -> str:
        return (
            f"<TokenBudget capacity={self.capacity:g} level={self._level:.1f} "
            f"waiters={len(self._waiters)}>"
        )

    @property
    def waiting(self) -> int:
        """Reservations queued and not yet served (cancelled ones may linger until skipped)."""
        queue = self._waiters
        if not queue:
            return 0
        return sum(1 for _, fut in queue if not fut.done())

    def level(self) -> float:
        """Tokens available now; negative while in debt."""
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        return self._level

    def _refill(self, now: float) -> None:
        # min() and max() spelled out: this runs several times per request
        last = self._last
        if last is None:
            self._last = now
        elif now > last:
            earned = (now - last) * self.rate
            ceiling = self._ceiling + earned
            if not ceiling < self.max_capacity:
                ceiling = self.max_capacity
            self._ceiling = ceiling
            level = self._level + earned
            cap = self.capacity
            if level > cap:  # full: what the refill spilled, and when, for the window learner
                old = self._level
                self.spilled += level - (old if old > cap else cap)
                self.full_at, self.full_mark = now, self.taken
                level = cap
            self._level = level if level < ceiling else ceiling
            self._last = now

    def _take(self, tokens: float) -> float:
        self._level -= tokens
        self._ceiling -= tokens
        self.taken += tokens
        return self.taken

    def ready(self, tokens: float, now: float) -> bool:
        """Whether ``tokens`` can be taken at clock time ``now`` without queueing (the bucket
        refilled to ``now``; nothing is taken: :meth:`take` does that)."""
        if self._closed:
            return False
        self._refill(now)
        # _fits, inline
        return not self._waiters and self._level + self._eps >= min(tokens, self.capacity)

    def take(self, tokens: float) -> float:
        """Take ``tokens`` that :meth:`ready` just admitted; returns :attr:`taken` after them
        (the mark :meth:`reserve` returns)."""
        self._level -= tokens  # _take, inline
        self._ceiling -= tokens
        self.taken += tokens
        return self.taken

    def _fits(self, tokens: float) -> bool:
        # a request larger than the bucket needs a full bucket, then goes into debt
        return self._level + self._eps >= min(tokens, self.capacity)

    def fits(self, tokens: float) -> bool:
        """Whether ``tokens`` could be reserved now without queueing."""
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        return self._fits(tokens) and not self.waiting

    def resize(self, capacity: float) -> None:
        """Set the capacity, within ``[min(1, max_capacity), max_capacity]``; the level is cut
        to the new capacity (a larger one fills as the rate refills it, or by :meth:`grow`)."""
        if not math.isfinite(capacity):
            raise ValueError(f"capacity must be finite, got {capacity!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self.capacity = min(self.max_capacity, max(min(1.0, self.max_capacity), capacity))
        self._eps = 1e-9 * self.capacity
        self._level = min(self._level, self.capacity)
        self._wake()

    def sync(self, level: float) -> None:
        """Set the level to ``level`` (a server's count), kept within
        ``[-capacity, min(capacity, ceiling)]``: a count can pause senders for at most one
        bucket's refill and never grant beyond the ceiling."""
        if not math.isfinite(level):
            raise ValueError(f"level must be finite, got {level!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self._level = max(-self.capacity, min(level, self.capacity, self._ceiling))
        self._wake()

    def grow(self, tokens: float) -> float:
        """Enlarge the capacity by ``tokens`` and add them to the level (a probe of a larger
        window), within the ceiling; returns the tokens the capacity actually grew by."""
        if not (math.isfinite(tokens) and tokens >= 0):
            raise ValueError(f"tokens must be a finite number >= 0, got {tokens!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        before = self.capacity
        self.capacity = min(self.max_capacity, self.capacity + tokens)
        self._eps = 1e-9 * self.capacity
        grown = self.capacity - before
        self._level = min(self._level + grown, self.capacity, self._ceiling)
        self._wake()
        return grown

    async def reserve(self, tokens: int) -> float:
        """Take ``tokens`` from the budget, waiting in FIFO order until they are available;
        returns :attr:`taken` right after this reservation (its place among the others).

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
            return self._take(tokens)
        fut: asyncio.Future[float] = self._timing.loop().create_future()
        self._waiters.append((tokens, fut))
        self._wake()
        try:
            return await fut
        except BaseException:
            if granted(fut):
                self.abandoned += tokens
                self.refund(tokens)  # granted, then cancelled before resuming: give it back
            else:
                discard(self._waiters, (tokens, fut))
                self._wake()  # the head may have left: let the next one in
            raise

    def refund(self, tokens: float) -> None:
        """Give back ``tokens`` reserved but not used (the level never exceeds capacity)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self._ceiling = min(self.max_capacity, self._ceiling + tokens)
        self._level = min(self.capacity, self._level + tokens, self._ceiling)
        if self._waiters or self._handle is not None:  # else _wake has nothing to do
            self._wake()

    def charge(self, tokens: float) -> None:
        """Take ``tokens`` used beyond the reservation; the level may go negative (debt)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        now = self._timing.now_or_none()
        if now is not None:
            self._refill(now)
        self._level -= tokens
        self._ceiling -= tokens
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
                fut.set_result(self._take(tokens))
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
