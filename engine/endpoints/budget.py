"""Endpoint stage: a tokens-per-minute budget whose reservations can be given back."""

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

    Attributes:
        capacity: bucket size in tokens (``burst_seconds`` of the rate).
        rate: refill rate in tokens per second.
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

    capacity: float
    rate: float

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
        # The level is the tokens available now (negative is debt), as of `_last`, the
        # clock time of the last refill (None before first use); `_eps` is the float slack
        # when comparing a level with a need. Reservations queue in FIFO order as
        # (tokens, future); `_handle` wakes the head when it can be served.
        self._level = self.capacity
        self._last: float | None = None
        self._eps = 1e-9 * self.capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._timing = Timing(clock)
        self._closed = False

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
            if granted(fut):
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
