"""Endpoint stage: the clock and event loop the limits read, and their FIFO waiter queues.

Time comes from one clock: by default the running event loop's ``time()``; tests inject a
virtual clock (or run on a virtual-time loop) and never sleep. Timers are set on the loop as
delays from the clock's reading, so an injected clock must advance with the loop's (an
offset is fine).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

__all__ = ("Clock", "Timing", "discard", "granted")

Clock = Callable[[], float]


class Timing:
    """The clock and the event loop a limiter uses, both bound lazily on first use.

    A limiter belongs to the event loop it is first used on. Without an injected ``clock``
    the time is that loop's ``time()``.
    """

    __slots__ = ("_clock", "_loop")

    def __init__(self, clock: Clock | None) -> None:
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        loop = self._loop
        if loop is not None and self._clock is None:  # the common case, in one call
            return loop.time()
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


def granted(fut: asyncio.Future[Any]) -> bool:
    """Whether a waiter's future was resolved with a grant (not cancelled, not failed)."""
    return fut.done() and not fut.cancelled() and fut.exception() is None


def discard(queue: deque[Any], item: object) -> None:
    with suppress(ValueError):
        queue.remove(item)
