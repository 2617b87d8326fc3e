"""One worker thread per tracker, fed through a bounded queue that never blocks its caller.

:meth:`TrackerWorker.submit` appends a call and returns at once; when ``queue_size`` calls
are already waiting the oldest is dropped and counted (``dropped``), so a slow or hung
tracker (a server that does not answer) never slows the training loop and never grows its
memory. The thread opens the tracker's run, then makes the calls in order. The first failure
(the open, or any call) is reported once through ``on_failure``; a tracker whose open failed
is left out for the rest of the run (its calls are discarded), one whose call failed keeps
getting the later ones (counted in ``errors``). :meth:`TrackerWorker.close` lets the thread
finish the queue and close the tracker, waiting at most ``timeout`` seconds: a tracker that
takes longer is left behind (a daemon thread, it cannot keep the process alive).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .base import Tracker, TrackerRun

__all__ = ("TrackerWorker",)

FailureHook = Callable[[str, str, BaseException], None]
"""Called (from the worker thread) with the tracker's name, what failed and the exception."""


class TrackerWorker:
    """Runs one :class:`~engine.telemetry.trackers.base.Tracker` on its own thread.

    Attributes:
        run_id: the tracker's run id once opened, else None.
        dropped: calls dropped because the queue was full.
        errors: calls (and the open or close) that raised.
        failed: the open failed: the tracker is out of this run.
    """

    def __init__(
        self,
        tracker: Tracker,
        run: TrackerRun,
        *,
        queue_size: int,
        on_failure: FailureHook,
        on_open: Callable[[str, str], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.name = tracker.name
        self._run = run
        self._size = max(1, queue_size)
        self._items: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._on_failure = on_failure
        self._on_open = on_open
        self._warned = False
        self.run_id: str | None = None
        self.dropped = 0
        self.errors = 0
        self.failed = False
        self._thread = threading.Thread(target=self._main, name=f"tracker-{self.name}", daemon=True)

    def start(self) -> None:
        """Start the thread (it opens the tracker's run first)."""
        self._thread.start()

    def submit(self, method: str, *args: Any) -> None:
        """Queue ``tracker.method(*args)``; never blocks (drops the oldest call when full)."""
        with self._cond:
            if self._closing or self.failed:
                return
            if len(self._items) >= self._size:
                self._items.popleft()
                self.dropped += 1
            self._items.append((method, args))
            self._cond.notify()

    def request_close(self) -> None:
        """Let the thread finish the queued calls, then close the tracker; never blocks."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def close(self, timeout: float) -> bool:
        """:meth:`request_close`, then wait at most ``timeout`` seconds for the thread; True
        when it finished in time. Blocking (call it from a worker thread)."""
        self.request_close()
        if self._thread.is_alive():
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            self._on_failure(self.name, what, exc)

    def _next(self) -> tuple[str, tuple[Any, ...]] | None:
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait()
            return self._items.popleft() if self._items else None

    def _main(self) -> None:
        try:
            self.run_id = self.tracker.open(self._run)
        except BaseException as exc:  # a tracker's failure never leaves this thread
            with self._cond:
                self.failed = True
                self._items.clear()
            self._fail("open", exc)
            return
        if self._on_open is not None:
            try:
                self._on_open(self.name, self.run_id)
            except Exception as exc:
                self._fail("save its run id", exc)
        while (item := self._next()) is not None:
            method, args = item
            try:
                getattr(self.tracker, method)(*args)
            except BaseException as exc:
                self._fail(method, exc)
        try:
            self.tracker.close()
        except BaseException as exc:
            self._fail("close", exc)
