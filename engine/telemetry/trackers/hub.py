"""The trackers of one run: fan-out to their workers, the warnings, ``trackers.json``.

:class:`Trackers` is what the trainer holds. Its ``log_*`` methods only queue (one
:class:`~engine.telemetry.trackers.worker.TrackerWorker` per tracker), so they are safe to
call from the event loop; :meth:`Trackers.close` blocks up to ``close_timeout`` (all the
trackers flush at once) and belongs in a worker thread. A tracker's first failure is warned
about once (a structlog ``tracker.failed`` warning and a ``warning: ...`` line on stderr),
from the thread that calls the hub, never from the tracker's thread, so the run's event log
has one writer.

``trackers.json`` in the run directory keeps each tracker's run id, written as soon as the
tracker opened its run, so ``--resume`` continues the same tracker runs; at the end it also
counts each tracker's dropped calls and errors.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ...errors import ConfigError
from ..logs import get_logger
from . import mlflow, tensorboard, trackio, wandb
from .base import Tracker, TrackerRun, TrackerSpec, missing_modules, numeric_metrics
from .worker import TrackerWorker

__all__ = ("SPECS", "STATE_FILE", "Trackers", "read_state", "require_trackers", "tracker_class")

_log = get_logger("engine.telemetry.trackers")

STATE_FILE = "trackers.json"
"""Each tracker's run id (and, at the end, its dropped calls and errors), in the run dir."""

SPECS: Mapping[str, TrackerSpec] = {
    s.name: s for s in (tensorboard.SPEC, mlflow.SPEC, wandb.SPEC, trackio.SPEC)
}
"""Every tracker by name: the modules it needs and the extra that installs them."""

_CLASSES: Mapping[str, Callable[[], Tracker]] = {
    "tensorboard": tensorboard.TensorBoardTracker,
    "mlflow": mlflow.MLflowTracker,
    "wandb": wandb.WandbTracker,
    "trackio": trackio.TrackioTracker,
}


def tracker_class(name: str) -> Callable[[], Tracker]:
    """The tracker class of ``name`` (one of :data:`SPECS`)."""
    return _CLASSES[name]


def require_trackers(names: Sequence[str]) -> None:
    """Raise one ConfigError naming the extra to install for each tracker of ``names``
    whose library is missing (found without importing it); unknown names too."""
    problems = []
    for name in names:
        spec = SPECS.get(name)
        if spec is None:
            raise ConfigError(f"unknown tracker {name!r}; known trackers: {', '.join(SPECS)}")
        missing = missing_modules(spec)
        if missing:
            problems.append(
                f"{name} needs {', '.join(missing)}: pip install 'grpo-engine[{spec.extra}]'"
            )
    if problems:
        raise ConfigError("; ".join(problems), key="report_to")


def read_state(path: Path) -> dict[str, dict[str, Any]]:
    """The trackers.json at ``path``: ``{name: {"run_id": ...}}``; empty when absent or
    unreadable (a resumed run then opens new tracker runs)."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, dict)}


class Trackers:
    """The trackers of one run (see the module docstring).

    Args:
        trackers: ``(tracker, run)`` pairs: each tracker and what it opens.
        queue_size: calls buffered per tracker.
        close_timeout: seconds :meth:`close` waits for the trackers to flush.
        state_path: where trackers.json goes; None keeps no state.
        state: the trackers.json read at a resume, kept for trackers not in this run.
    """

    def __init__(
        self,
        trackers: Sequence[tuple[Tracker, TrackerRun]] = (),
        *,
        queue_size: int = 1024,
        close_timeout: float = 60.0,
        state_path: Path | None = None,
        state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._failures: deque[tuple[str, str, str]] = deque(maxlen=64)
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (state or {}).items()}
        self._state_path = state_path
        self.close_timeout = close_timeout
        self.workers = [
            TrackerWorker(
                t, run, queue_size=queue_size, on_failure=self._failed, on_open=self._opened
            )
            for t, run in trackers
        ]
        self._started = False
        self._closed = False

    def __bool__(self) -> bool:
        return bool(self.workers)

    @property
    def names(self) -> list[str]:
        """The trackers' names, in report_to order."""
        return [w.name for w in self.workers]

    def start(self) -> None:
        """Start every tracker's thread (each opens its run there); never blocks."""
        if not self._started:
            self._started = True
            for w in self.workers:
                w.start()

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Queue one step's metrics line (its finite numbers) for every tracker."""
        self._submit("log_metrics", step, numeric_metrics(metrics))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Queue the run's summary for every tracker."""
        self._submit("log_summary", dict(summary))

    def log_artifact(self, path: str | Path) -> None:
        """Queue a file or directory to attach to every tracker's run."""
        self._submit("log_artifact", Path(path))

    def _submit(self, method: str, *args: Any) -> None:
        for w in self.workers:
            w.submit(method, *args)
        self.warn_failures()

    def close(self, timeout: float | None = None) -> None:
        """Flush and close every tracker, waiting at most ``timeout`` (default
        ``close_timeout``) seconds in all; idempotent. Blocking: call it from a thread."""
        if self._closed:
            return
        self._closed = True
        wait = self.close_timeout if timeout is None else timeout
        for w in self.workers:  # every tracker flushes at once: one deadline for them all
            w.request_close()
        deadline = time.monotonic() + wait
        late = [
            w.name
            for w in self.workers
            if self._started and not w.close(deadline - time.monotonic())
        ]
        self.warn_failures()
        for w in self.workers:
            if w.dropped:
                _warn(f"tracker {w.name} dropped {w.dropped} calls (its queue was full)")
        for name in late:
            _warn(f"tracker {name} did not finish within {wait:g} s; left behind")
        with self._lock:
            for w in self.workers:
                entry = self._state.setdefault(w.name, {})
                entry.update(dropped=w.dropped, errors=w.errors, finished=w.name not in late)
            self._write_state()

    def warn_failures(self) -> None:
        """Warn about the failures the trackers' threads reported (once per tracker)."""
        while self._failures:
            name, what, detail = self._failures.popleft()
            _log.warning("tracker.failed", tracker=name, call=what, error=detail)
            _warn(f"tracker {name} failed ({what}: {detail}); training goes on without it")

    # ------------------------------------------------------------------ worker threads

    def _failed(self, name: str, what: str, exc: BaseException) -> None:
        detail = f"{type(exc).__name__}: {exc}"
        self._failures.append((name, what, detail[:300]))

    def _opened(self, name: str, run_id: str) -> None:
        with self._lock:
            self._state[name] = {"run_id": run_id}
            self._write_state()

    def _write_state(self) -> None:
        if self._state_path is None:
            return
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(self._state, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self._state_path)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)
