"""Shared test configuration.

Event-loop watchdog: every ``async def`` test fails (after it has otherwise passed) when the
code it exercises blocked the event loop for longer than ``ENGINE_TEST_LOOP_BLOCK_LIMIT``
seconds (default 1.0; 0 turns the check off): a ``time.sleep``, a synchronous HTTP call or a
long CPU-bound stretch inside a coroutine, a callback or another task. The failure shows the
stack that was blocking.

How: a ``call_later`` chain (not a task, so it never shows in ``asyncio.all_tasks()``) beats on
the test's loop; a thread notices when the beat stops and samples the loop thread's stack.
Synchronous work in the test function's own body (a finite-difference check, building data)
is not counted: a block whose innermost coroutine is the test itself is the test's business.
Nor is time the loop thread spends waiting for a core: on a loaded machine a beat can be late
while the loop idles in its selector, or while its thread is runnable but not running; a
block is wall-clock time while the thread sleeps outside the selector (``time.sleep``, a
blocking call), or CPU time while it runs (Linux: ``/proc`` and the thread's CPU clock).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sys
import threading
import time
import traceback
from collections.abc import Generator
from types import CodeType, FrameType
from typing import Any

import pytest

# Small matrices: threaded BLAS only spins against the event loop (see engine/_blas.py).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

LOOP_BLOCK_LIMIT = float(os.environ.get("ENGINE_TEST_LOOP_BLOCK_LIMIT", "1.0"))
_TICK = 0.05  # seconds between beats, and between the watcher's looks
_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _innermost_coroutine(frame: FrameType | None) -> CodeType | None:
    while frame is not None:
        if frame.f_code.co_flags & _ASYNC_CODE:
            return frame.f_code
        frame = frame.f_back
    return None


def _waiting_in_selector(frame: FrameType) -> bool:
    """Whether the loop thread is in the selector's ``select``: the loop is idle, waiting for
    I/O or its next timer. A beat that is late while the loop idles means the process got no
    core in time (a loaded machine), not that anything blocked the loop."""
    return frame.f_code.co_name in ("select", "poll") and frame.f_code.co_filename.endswith(
        "selectors.py"
    )


class _LoopWatchdog:
    """Finds the longest block of the running loop not spent in the test's own body."""

    def __init__(self, loop: asyncio.AbstractEventLoop, own: CodeType, limit: float) -> None:
        self._loop = loop
        self._own = own  # the test function's code: its own synchronous work is exempt
        self._limit = limit
        self._loop_thread = threading.get_ident()
        self._loop_task = threading.get_native_id()  # its /proc/self/task entry
        self._beat = time.perf_counter()  # written by the loop, read by the watcher
        self._beat_cpu = time.thread_time()  # the loop thread's CPU time at that beat
        self.worst = 0.0  # seconds of the longest counted block
        self.stack = ""  # where the loop was stuck during it
        self._handle: asyncio.TimerHandle | None = loop.call_later(_TICK, self._tick)
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._watcher.start()

    def _tick(self) -> None:
        self._beat_cpu = time.thread_time()
        self._beat = time.perf_counter()
        self._handle = self._loop.call_later(_TICK, self._tick)

    def _watch(self) -> None:
        counted: float | None = None  # the beat that a counted block started after
        stack = ""
        while not self._done.wait(_TICK):
            beat, beat_cpu = self._beat, self._beat_cpu
            blocked = time.perf_counter() - beat - _TICK
            if blocked <= self._limit:
                continue
            blocked = self._measure(blocked, beat_cpu)
            if blocked <= self._limit:
                continue
            if counted != beat:  # a new block: look where the loop is stuck
                frame = sys._current_frames().get(self._loop_thread)
                if frame is None or _innermost_coroutine(frame) is self._own:
                    continue
                if _waiting_in_selector(frame):  # idle, the beat only late: a loaded machine
                    continue
                counted, stack = beat, "".join(traceback.format_stack(frame)[-12:])
            if blocked > self.worst:
                self.worst, self.stack = blocked, stack

    def _measure(self, wall: float, beat_cpu: float) -> float:
        """How long the loop has been held: the wall-clock time since the beat while its thread
        sleeps outside the loop (``time.sleep``, a blocking call), else the CPU time it ran.
        A thread that is runnable but waits for a core (a loaded machine) holds nothing."""
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(self._loop_thread)) - beat_cpu
            with open(f"/proc/self/task/{self._loop_task}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (AttributeError, OSError, IndexError):  # not Linux: wall-clock time only
            return wall
        return wall if state in ("S", "D") else cpu

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._done.set()
        self._watcher.join()


def _watched(test: Any, nodeid: str) -> Any:
    own = inspect.unwrap(test).__code__

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        watchdog = _LoopWatchdog(asyncio.get_running_loop(), own, LOOP_BLOCK_LIMIT)
        try:
            result = await test(*args, **kwargs)
        finally:
            watchdog.stop()
        if watchdog.worst:
            pytest.fail(
                f"{nodeid} blocked the event loop for {watchdog.worst:.2f} s "
                f"(limit {LOOP_BLOCK_LIMIT} s, ENGINE_TEST_LOOP_BLOCK_LIMIT); it was stuck in:\n"
                f"{watchdog.stack}",
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


@pytest.fixture(autouse=True)
def _reset_structlog() -> Generator[None, None, None]:
    """Undo any structlog configuration a test made (CLI commands run in-process configure it):
    no test sees another's logging setup."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _restore_gc() -> Generator[None, None, None]:
    """Undo the garbage-collector tuning a test made (CLI commands run in-process call
    :func:`engine.runtime.tune_gc`): no test inherits another's frozen heap or thresholds."""
    import gc

    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    if gc.get_freeze_count():
        gc.unfreeze()
