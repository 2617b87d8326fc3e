"""Telemetry: per-request events, step metrics, logging, convergence monitoring and export.

- :mod:`~engine.telemetry.records`: JSON lines: the serializer, the crash-safe writer, the reader;
- :mod:`~engine.telemetry.events`: the event and metrics logs and the request statistics;
- :mod:`~engine.telemetry.logs`: the engine's structlog loggers and the CLI's logging setup;
- :mod:`~engine.telemetry.monitor`: the reward trend and its confidence interval;
- :mod:`~engine.telemetry.export`: scored groups as JSONL for weight trainers.

Imports nothing from the engine but errors and types, so every later stage (the client
included) can write events.
"""
