"""Stopping a run from outside: SIGINT, SIGTERM and SIGHUP become a clean stop.

:class:`SignalStop` installs its handlers before anything is built (``await
tg.start(stop.watch)``), so a signal at any moment after that is handled: during start-up it
cancels the start-up (:meth:`SignalStop.startup`; nothing was written); once a trainer is
attached it asks :meth:`~engine.training.trainer.TrainingManager.request_stop`, which ends
the step, cancels the requests in flight and a running evaluation, checkpoints and writes
the summary. A second signal ends the process at once, as a kill would (what the run wrote
is crash-safe; the steps since the last checkpoint are lost). The exit status is
``128 + signal number`` (130, 143, 129).

The handlers run on the event loop, so they are only as prompt as the loop is free: the run
keeps blocking work (data reads, checkpoint writes, fsyncs) in worker threads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import anyio
from anyio.abc import TaskStatus

from .trainer import TrainingManager

__all__ = ("STOP_SIGNALS", "SignalStop")

STOP_SIGNALS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    **({signal.SIGHUP: "hangup"} if hasattr(signal, "SIGHUP") else {}),
}
"""The signals that stop a run, and the stop reason each gives (``summary.json``)."""


class SignalStop:
    """Turns :data:`STOP_SIGNALS` into a clean stop of the attached trainer.

    Attributes:
        seen: the signals received, in order.
    """

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._trainer: TrainingManager | None = None
        self._startup: anyio.CancelScope | None = None

    @property
    def status(self) -> int | None:
        """The exit status a signal asks for (``128 + signum``), None without one."""
        return 128 + self.seen[0] if self.seen else None

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle the signals until cancelled; ``started`` once the handlers are installed.

        A second signal ends the process at once with ``128 + signum``.
        """
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.seen.append(signum)
                if len(self.seen) > 1:
                    _exit_now(signum)
                if self._trainer is not None:
                    self._trainer.request_stop(STOP_SIGNALS[signum])
                elif self._startup is not None:
                    self._startup.cancel()

    @contextlib.contextmanager
    def startup(self) -> Iterator[anyio.CancelScope]:
        """A scope a signal cancels until :meth:`attach` (the trainer stops itself then)."""
        with anyio.CancelScope() as scope:
            self._startup = scope
            if self.seen:
                scope.cancel()
            try:
                yield scope
            finally:
                self._startup = None

    def attach(self, trainer: TrainingManager) -> None:
        """Send later signals to ``trainer``; one already received stops it at once."""
        self._trainer = trainer
        if self.seen:
            trainer.request_stop(STOP_SIGNALS[self.seen[0]])


def _exit_now(signum: int) -> None:
    """End the process at once: no cleanup, no traceback (a raise in a task would print an
    exception group)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"error: second signal ({signal.Signals(signum).name}): exiting now\n")
        sys.stderr.flush()
    os._exit(128 + signum)
