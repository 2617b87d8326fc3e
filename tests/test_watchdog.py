"""The event-loop watchdog of tests/conftest.py: it catches what blocks the loop, not load."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import _LoopWatchdog

LIMIT = 0.3


def _worst(block: str) -> float:
    """The longest block the watchdog saw while a coroutine (not the test's own) did ``block``
    for 0.8 s."""

    async def blocker() -> None:
        if block == "sleep":
            time.sleep(0.8)  # noqa: ASYNC251 - the block under test: a sleep outside the selector
        elif block == "cpu":
            end = time.thread_time() + 0.8
            while time.thread_time() < end:  # 0.8 s of CPU without yielding, however loaded
                pass
        else:
            await asyncio.sleep(0.8)  # idle in the selector: no block

    async def main() -> float:
        watchdog = _LoopWatchdog(asyncio.get_running_loop(), _worst.__code__, LIMIT)
        try:
            await asyncio.sleep(0.1)
            await blocker()
            await asyncio.sleep(0.1)
        finally:
            watchdog.stop()
        return watchdog.worst

    return asyncio.run(main())


def test_watchdog_counts_blocking_calls_and_cpu_not_idle_waits() -> None:
    """A time.sleep and a CPU-bound stretch in a coroutine are blocks; an await is not."""
    assert _worst("sleep") > LIMIT
    assert _worst("cpu") > LIMIT
    assert _worst("idle") == 0.0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling policies")
def test_watchdog_ignores_a_loop_that_waits_for_a_core() -> None:
    """A loop starved of CPU by another process (the loaded machine) blocks nothing: its
    thread is runnable, not running, and its late beats are not counted."""
    cpu = min(os.sched_getaffinity(0))
    hog_code = (
        f"import os, time; os.sched_setaffinity(0, {{{cpu}}}); end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end: pass"
    )

    async def busy_until_done(hog: subprocess.Popen[bytes]) -> None:
        while hog.poll() is None:  # short steps, each yielding: the loop never holds
            sum(range(2000))
            await asyncio.sleep(0)

    async def main(hog: subprocess.Popen[bytes]) -> float:
        watchdog = _LoopWatchdog(asyncio.get_running_loop(), main.__code__, LIMIT)
        affinity = os.sched_getaffinity(0)
        try:  # this thread (the loop's) only: the watcher keeps its core and its policy
            os.sched_setaffinity(0, {cpu})
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            await busy_until_done(hog)
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setaffinity(0, affinity)
            hog.wait()
            watchdog.stop()
        return watchdog.worst

    hog = subprocess.Popen([sys.executable, "-c", hog_code])
    assert asyncio.run(main(hog)) == 0.0
