"""Telemetry: per-request events, step metrics, and structlog setup helpers.

Three outputs, all JSON lines written with orjson:

- :class:`EventLog` -> ``OUT/events.jsonl``: one line per request attempt (generation or judge).
- :class:`MetricsLog` -> ``OUT/metrics.jsonl``: one line per optimizer step.
- :class:`RequestStats`: aggregates events between steps into token, latency and error metrics.

Every line is written whole with one ``write`` call on a file opened in append mode and flushed
at each step, so a crash never leaves a torn line except possibly the very last one, which
readers (:func:`read_jsonl`) skip and a writer appending to the file (a resumed run) cuts
off first. The library never configures logging; only the
CLI calls :func:`configure_logging`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import structlog

__all__ = (
    "EventLog",
    "MetricsLog",
    "RequestStats",
    "attach_event_log",
    "configure_logging",
    "get_logger",
    "read_jsonl",
)

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """orjson with numpy support; NaN becomes null."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline: drop a torn last line a crash left behind."""
    try:
        fh = open(path, "rb+")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                if start + i + 1 < end:
                    fh.truncate(start + i + 1)
                return
            pos = start
        if end:
            fh.truncate(0)


class _JsonlWriter:
    """Append-only JSON lines file; each record is one write of one whole line."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fh: IO[bytes] | None = None  # opened at the first write: no empty files on errors
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.path is not None and not self._closed

    def write_bytes(self, data: bytes) -> None:
        if not self.enabled:
            return
        if self._fh is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.path)  # appending after a crash: no line may join a fragment
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._fh.write(data)

    def write(self, record: Mapping[str, Any]) -> None:
        self.write_bytes(dumps(record) + b"\n")

    def fsync(self) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EventLog:
    """Per-request events to ``events.jsonl``; also feeds :class:`RequestStats`.

    Example::

        events = EventLog("runs/x/events.jsonl")
        events.emit(kind="generation", endpoint="/v1/completions", status=200, latency=0.21,
                    attempt=1, prompt_tokens=12, completion_tokens=30)

    Events are buffered in memory and written in one call per ``flush`` (every
    ``flush_every`` events and at each step), which keeps per-request cost to a dict and an
    orjson call. ``path=None`` keeps only the aggregated statistics.
    """

    def __init__(self, path: str | Path | None = None, *, flush_every: int = 256) -> None:
        self._writer = _JsonlWriter(path)
        self._buf: list[bytes] = []  # serialized lines not yet written
        self._flush_every = flush_every  # write after this many buffered events
        self.stats = RequestStats()  # requests of no step (evaluation, reflection)
        self._by_step: dict[int, RequestStats] = {}  # requests by the step of their group
        self.count = 0  # events emitted in total

    @property
    def path(self) -> Path | None:
        return self._writer.path

    def emit(self, **fields: Any) -> None:
        """Record one request attempt. ``ts`` is added when missing."""
        fields.setdefault("ts", time.time())
        step = _step_of(fields)
        if step is None:
            self.stats.record(fields)
        else:
            bucket = self._by_step.get(step)
            if bucket is None:
                bucket = self._by_step[step] = RequestStats()
            bucket.record(fields)
        self.count += 1
        if self._writer.enabled:
            self._buf.append(dumps(fields))
            if len(self._buf) >= self._flush_every:
                self.flush()

    def step_stats(self, step: int) -> dict[str, Any]:
        """Metrics of the requests made for batch ``step`` (and any earlier batch not yet
        reported), plus requests of no step since the last call; resets what it reports."""
        merged = self.stats
        for s in sorted(k for k in self._by_step if k <= step):
            merged.merge(self._by_step.pop(s))
        out = merged.snapshot(reset=True)
        return out

    def log(self, **fields: Any) -> None:
        """Record a log line (``kind="log"``); it is not a request and not counted as one."""
        fields.setdefault("kind", "log")
        if self._writer.enabled:
            self._buf.append(dumps(fields))

    def flush(self) -> None:
        """Write buffered events as whole lines."""
        if self._buf:
            self._writer.write_bytes(b"\n".join(self._buf) + b"\n")
        self._buf.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class MetricsLog:
    """One JSON line per optimizer step to ``metrics.jsonl``, fsynced each step."""

    def __init__(self, path: str | Path | None) -> None:
        self._writer = _JsonlWriter(path)

    def write(self, record: Mapping[str, Any]) -> None:
        self._writer.write(record)
        self._writer.fsync()

    def close(self) -> None:
        self._writer.close()


class RequestStats:
    """Aggregates request events: tokens, latency percentiles, errors by class.

    ``snapshot(reset=True)`` returns the metrics for the window since the last reset, named
    as in ``metrics.jsonl`` (``tokens/prompt``, ``latency/p95``, ``requests/errors`` ...).
    An attempt the engine cancelled itself (``error_class: cancelled``: an oversampled
    straggler, the sibling of a failed fan-out, a shutdown) is not an error of the endpoint:
    it counts in ``requests/cancelled``, not in ``requests/errors`` or the error rate.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.errors = 0
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.latencies: list[float] = []
        self.error_classes: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()

    def record(self, ev: Mapping[str, Any]) -> None:
        self.requests += 1
        self.by_kind[str(ev.get("kind", "generation"))] += 1
        self.prompt_tokens += int(ev.get("prompt_tokens") or 0)
        self.completion_tokens += int(ev.get("completion_tokens") or 0)
        self.cost += float(ev.get("cost") or 0.0)
        lat = ev.get("latency")
        if lat is not None:
            self.latencies.append(float(lat))
        err = ev.get("error_class")
        if err == "cancelled":
            self.cancelled += 1
        elif err:
            self.errors += 1
            self.error_classes[str(err)] += 1

    def merge(self, other: RequestStats) -> None:
        """Add ``other``'s counts into this one."""
        self.requests += other.requests
        self.errors += other.errors
        self.cancelled += other.cancelled
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.latencies.extend(other.latencies)
        self.error_classes.update(other.error_classes)
        self.by_kind.update(other.by_kind)

    def snapshot(self, *, reset: bool = True) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=np.float64)
        if lat.size:
            p50, p95, p99 = (float(x) for x in np.percentile(lat, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        out: dict[str, Any] = {
            "requests/total": self.requests,
            "requests/errors": self.errors,
            "requests/error_rate": self.errors / self.requests if self.requests else 0.0,
            "requests/cancelled": self.cancelled,
            "tokens/prompt": self.prompt_tokens,
            "tokens/completion": self.completion_tokens,
            "cost": self.cost,
            "latency/p50": p50,
            "latency/p95": p95,
            "latency/p99": p99,
        }
        for cls, n in sorted(self.error_classes.items()):
            out[f"errors/{cls}"] = n
        for kind, n in sorted(self.by_kind.items()):
            out[f"requests/{kind}"] = n
        if reset:
            self.reset()
        return out


def _step_of(fields: Mapping[str, Any]) -> int | None:
    """The batch step an event belongs to: its ``step`` field, or the ``STEP-J`` group id."""
    step = fields.get("step")
    if isinstance(step, int):
        return step
    gid = fields.get("group_id")
    if isinstance(gid, str):
        head, sep, _ = gid.partition("-")
        if sep and head.isdigit():
            return int(head)
    return None


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Read a JSON lines file written by this module; a torn final line is skipped."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn last line from a crash: ignore it
            if raw.strip():
                yield orjson.loads(raw)


class _LogSink:
    """structlog processor: every record becomes a ``kind="log"`` line of the run's events."""

    def __init__(self) -> None:
        self.events: EventLog | None = None  # set by attach_event_log()
        self.console_level = 30  # records at or above this level also go to the console

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if self.events is not None:
            self.events.log(**event_dict)
        if _LEVELS.get(method, 20) < self.console_level:
            raise structlog.DropEvent
        return event_dict


_LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "critical": 50,
    "exception": 40,
}
_SINK = _LogSink()


def _render(obj: Any, **kwargs: Any) -> bytes:
    """JSONRenderer's serializer: structlog passes ``default=``; :func:`dumps` has its own."""
    return dumps(obj)


def configure_logging(*, level: str = "info", console_level: str = "warning") -> None:
    """Configure structlog for the CLI.

    Records at ``level`` and above are written as JSON lines (``kind: "log"``) into the event
    log attached with :func:`attach_event_log` (the run's ``events.jsonl``); records at
    ``console_level`` and above are also printed to stderr: readable lines on a TTY, JSON
    otherwise. ``run_id``, ``step`` and ``group_id`` bound with structlog's contextvars appear
    on every record. Only the CLI calls this; the library never configures logging.
    """
    _SINK.console_level = _LEVELS.get(console_level, 30)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _SINK,
    ]
    if sys.stderr.isatty():
        renderer: Any = structlog.dev.ConsoleRenderer(colors=True)
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_render)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def attach_event_log(events: EventLog | None) -> None:
    """Send configured structlog records to ``events`` (None detaches)."""
    _SINK.events = events


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _QuietUntilConfigured:
    """A structlog logger that stays silent until someone configures structlog.

    structlog's unconfigured default prints every record to stdout; a library must not do that
    to its user. Once the CLI (or the embedding application) configures structlog, calls go
    to the configured pipeline.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if not structlog.is_configured():
            return _noop
        return getattr(structlog.get_logger(self._name), method)


def get_logger(name: str = "engine") -> Any:
    """The engine's logger: structlog once configured, silent before; bind ``run_id``,
    ``step`` and ``group_id`` through ``structlog.contextvars``."""
    return _QuietUntilConfigured(name)
