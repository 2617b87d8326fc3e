"""Shared test configuration.

Event-loop watchdog: every ``async def`` test runs with a timer on its loop that measures how
late the loop gets round to it. A test during which the loop was blocked (a ``time.sleep``, a
synchronous HTTP call, a long CPU-bound stretch in a coroutine) for longer than
``ENGINE_TEST_LOOP_BLOCK_LIMIT`` seconds (default 1.0; 0 turns the check off) fails after it
has otherwise passed. The timer is a plain ``call_later`` chain, not a task, so it never shows
up in ``asyncio.all_tasks()``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import Generator
from typing import Any

import pytest

LOOP_BLOCK_LIMIT = float(os.environ.get("ENGINE_TEST_LOOP_BLOCK_LIMIT", "1.0"))
_TICK = 0.05  # seconds between the watchdog's timers


class _LoopWatchdog:
    """Records the worst lateness of a repeating timer on the running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.worst = 0.0  # seconds the loop was late, at most
        self._due = time.perf_counter() + _TICK
        self._handle: asyncio.TimerHandle | None = loop.call_later(_TICK, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self._due)
        self._due = now + _TICK
        self._handle = self._loop.call_later(_TICK, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.worst = max(self.worst, time.perf_counter() - self._due)  # a block at the very end


def _watched(test: Any, nodeid: str) -> Any:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        watchdog = _LoopWatchdog(asyncio.get_running_loop())
        try:
            result = await test(*args, **kwargs)
        finally:
            watchdog.stop()
        if watchdog.worst > LOOP_BLOCK_LIMIT:
            pytest.fail(
                f"{nodeid} blocked the event loop for {watchdog.worst:.2f} s "
                f"(limit {LOOP_BLOCK_LIMIT} s, ENGINE_TEST_LOOP_BLOCK_LIMIT)",
                pytrace=False,
            )
        return result

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    test = getattr(item, "obj", None)
    if LOOP_BLOCK_LIMIT <= 0 or not inspect.iscoroutinefunction(test):
        return (yield)
    item.obj = _watched(test, item.nodeid)  # type: ignore[attr-defined]
    try:
        return (yield)
    finally:
        item.obj = test  # type: ignore[attr-defined]
