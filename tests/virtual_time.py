"""Test helper: an asyncio event loop on virtual time, so timing tests never sleep for real.

The loop's ``time()`` is a number that only moves when nothing is ready to run: then it jumps
straight to the next scheduled timer. ``asyncio.sleep``, ``call_later``, ``asyncio.timeout``
and aiolimiter all read ``loop.time()``, so they follow it. A test that would wait forever
(nothing ready, no timer) raises :class:`VirtualTimeDeadlock` instead of hanging.

Example::

    @virtual_time
    async def test_sleep_takes_an_hour() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)           # returns at once in real time
        assert loop.time() - t0 == 3600
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ("VirtualTimeDeadlock", "VirtualTimeLoop", "sleep_until", "virtual_time")

P = ParamSpec("P")
T = TypeVar("T")


class VirtualTimeDeadlock(RuntimeError):
    """Nothing is ready and no timer is scheduled: the test would wait forever."""


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; instead of waiting for a timer it advances the virtual clock.

    Attributes:
        loop: the loop whose clock it advances (set once the loop exists).
    """

    def __init__(self, idle_timeout: float) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        # real seconds to wait for I/O when nothing is timed
        self._idle_timeout = idle_timeout

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timers: only real I/O (a thread's wake-up) can come
            events = super().select(self._idle_timeout)
            if not events:
                raise VirtualTimeDeadlock("nothing is ready and no timer is scheduled")
            return events
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps to the next timer.

    The clock starts away from 0 (``start`` seconds) so code that treats 0.0 as "never" is
    caught.
    """

    def __init__(self, start: float = 1000.0, idle_timeout: float = 5.0) -> None:
        self._virtual_now = start
        selector = _VirtualSelector(idle_timeout)
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (the loop does this itself when idle)."""
        if seconds < 0:
            raise ValueError("virtual time cannot go backwards")
        self._virtual_now += seconds


def virtual_time(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, T]:
    """Run an ``async def`` test to completion on a fresh :class:`VirtualTimeLoop`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            return runner.run(fn(*args, **kwargs))

    return wrapper


async def sleep_until(when: float) -> None:
    """Let everything scheduled before loop time ``when`` run, then return at ``when``."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, when - loop.time()))
