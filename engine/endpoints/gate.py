"""Endpoint stage: the shared 429 gate: after a 429 every sender pauses until one deadline.

The gate can be extended while closed (a later deadline wins; an earlier one never shortens
it). Without a wait from the server the pause is a default backoff that doubles for each new
429 episode (a 429 arriving while the gate is open) until a success resets it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from ..errors import ClientClosedError
from .timing import Timing, discard

__all__ = ("RateLimitGate",)

_SLACK = 1e-6
"""Seconds by which the gate timer may fire early (float rounding) and still open the gate."""


class RateLimitGate:
    """One deadline shared by every sender of a limiter.

    Example::

        gate = RateLimitGate(Timing(None), backoff=1.0, backoff_cap=60.0)
        gate.close_for(retry_after=2.0)     # a 429 asked for two seconds
        await gate.wait()                   # returns two seconds later; True: it waited

    Args:
        timing: the limiter's clock and loop.
        backoff: the first default pause, seconds.
        backoff_cap: the longest default pause, seconds.
    """

    __slots__ = ("_backoff", "_backoff_cap", "_closed", "_deadline", "_handle", "_strikes",
                 "_timing", "_waiters")  # fmt: skip

    def __init__(self, timing: Timing, backoff: float, backoff_cap: float) -> None:
        self._timing = timing
        self._backoff = backoff
        self._backoff_cap = backoff_cap
        # The clock time the gate opens (None while open), the senders paused on it in
        # order, and the one timer that opens it.
        self._deadline: float | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        # 429 episodes since the last success: they grow the default pause.
        self._strikes = 0
        self._closed = False

    def open_at(self, now: float | None) -> float | None:
        """The clock time the gate opens, or None when it is open at ``now``."""
        deadline = self._deadline
        return deadline if deadline is not None and now is not None and now < deadline else None

    async def wait(self) -> bool:
        """Sleep until the deadline passes, re-checking it; True if it waited.

        Raises:
            ClientClosedError: the gate was closed for good, before or while waiting.
        """
        waited = False
        while True:
            if self._closed:
                raise ClientClosedError("limiter is closed")
            deadline = self._deadline
            if deadline is None or self._timing.now() >= deadline:
                return waited
            waited = True
            fut = self._timing.loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                discard(self._waiters, fut)
                raise

    def close_for(self, retry_after: float | None) -> None:
        """A 429: pause every sender until ``now + retry_after``, or the default backoff when
        ``retry_after`` is None or not finite."""
        now = self._timing.now()
        if self._deadline is None or now >= self._deadline:
            self._strikes += 1  # a new episode: the gate was open when this 429 arrived
        if retry_after is None or not math.isfinite(retry_after):
            exponent = min(self._strikes - 1, 32)
            delay = min(self._backoff_cap, self._backoff * 2.0**exponent)
        else:
            delay = max(0.0, retry_after)
        self._extend(now + delay)

    def reset_backoff(self) -> None:
        """A success: the next 429 without a wait starts from the first default pause."""
        self._strikes = 0

    def shut(self) -> None:
        """Fail every paused sender with :class:`ClientClosedError`; later waits raise it."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ClientClosedError("limiter is closed"))
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _extend(self, deadline: float) -> None:
        current = self._deadline
        if current is not None and current >= deadline:
            return
        self._deadline = deadline
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._timing.call_at(deadline, self._tick)

    def _tick(self) -> None:
        """The timer fired: open the gate and wake every paused sender."""
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self._timing.now()
        if now + _SLACK < deadline:  # an injected clock ran slower than the loop's
            self._handle = self._timing.call_at(deadline, self._tick)
            return
        self._deadline = None
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
