"""Telemetry: the engine's structlog loggers, and the logging setup the CLI installs.

The library never configures logging: :func:`get_logger` gives loggers that stay silent
until someone configures structlog. Only the CLI calls :func:`configure_logging`, which sends
records into the run's event log (:func:`attach_event_log`) and the important ones to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .records import dumps

__all__ = ("LogRecordSink", "Logger", "attach_event_log", "configure_logging", "get_logger")

_LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "critical": 50,
    "exception": 40,
}


class Logger(Protocol):
    """What the engine calls on a logger: structlog's level methods, event first."""

    def debug(self, event: str, **fields: object) -> None: ...
    def info(self, event: str, **fields: object) -> None: ...
    def warning(self, event: str, **fields: object) -> None: ...
    def error(self, event: str, **fields: object) -> None: ...
    def exception(self, event: str, **fields: object) -> None: ...


class LogRecordSink(Protocol):
    """Where configured log records go as ``kind="log"`` lines: an :class:`EventLog`."""

    def log(self, **fields: object) -> None: ...


def get_logger(name: str = "engine") -> Logger:
    """The engine's logger: structlog once configured, silent before; bind ``run_id``,
    ``step`` and ``group_id`` through ``structlog.contextvars``."""
    return _QuietUntilConfigured(name)


def configure_logging(*, level: str = "info", console_level: str = "warning") -> None:
    """Configure structlog for the CLI.

    Records at ``level`` and above are written as JSON lines (``kind: "log"``) into the event
    log attached with :func:`attach_event_log` (the run's ``events.jsonl``); records at
    ``console_level`` and above are also printed to stderr: readable lines on a TTY, JSON
    otherwise. ``run_id``, ``step`` and ``group_id`` bound with structlog's contextvars appear
    on every record. Only the CLI calls this; the library never configures logging.
    """
    _SINK.console_level = _LEVELS.get(console_level, 30)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _SINK,
    ]
    renderer: Processor
    factory: Callable[..., WrappedLogger]
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
        factory = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_render)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def attach_event_log(events: LogRecordSink | None) -> None:
    """Send configured structlog records to ``events`` (None detaches)."""
    _SINK.events = events


class _LogSink:
    """structlog processor: every record becomes a ``kind="log"`` line of the run's events.

    Attributes:
        events: where records go, set by :func:`attach_event_log`; None drops them.
        console_level: records at or above this level also go on to the console renderer.
    """

    def __init__(self) -> None:
        self.events: LogRecordSink | None = None
        self.console_level = 30

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if self.events is not None:
            self.events.log(**event_dict)
        if _LEVELS.get(method, 20) < self.console_level:
            raise structlog.DropEvent
        return event_dict


_SINK = _LogSink()


def _render(obj: object, **kwargs: object) -> bytes:
    """JSONRenderer's serializer: structlog passes ``default=``; :func:`dumps` has its own."""
    return dumps(obj)


class _QuietUntilConfigured:
    """A structlog logger that stays silent until someone configures structlog.

    structlog's unconfigured default prints every record to stdout; a library must not do that
    to its user. Once the CLI (or the embedding application) configures structlog, calls go
    to the configured pipeline.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def debug(self, event: str, **fields: object) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: object) -> None:
        self._emit("exception", event, fields)

    def _emit(self, method: str, event: str, fields: dict[str, object]) -> None:
        if structlog.is_configured():
            getattr(structlog.get_logger(self._name), method)(event, **fields)
