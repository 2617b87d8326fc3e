"""Live metrics of a run for Prometheus: ``GET /metrics`` in the text exposition format.

:class:`RunMetrics` keeps cumulative counters fed by the run's
:class:`~engine.telemetry.events.EventLog` (every request and phase event, through
:meth:`~engine.telemetry.events.EventLog.subscribe`) and by each finished step
(:meth:`RunMetrics.observe_step`). :class:`PrometheusServer` serves them with aiohttp on the
running event loop (an async context manager; nothing it does blocks the loop: a scrape
formats a few dozen lines) and measures the loop's lag meanwhile. ``python -m engine run
--prometheus-port PORT`` (or ``[telemetry] prometheus_port``) runs one beside the training.

Metrics (all names prefixed ``grpo_``)::

    requests_total{kind}                      request attempts (generation, judge ...)
    request_errors_total{kind,error_class}    failed attempts by class (rate_limit, server ...)
    requests_cancelled_total{kind}            attempts the engine cancelled (stragglers ...)
    tokens_total{kind,type}                   prompt and completion tokens
    cost_usd_total{kind}                      cost the events carry (cost_usd, or cost)
    request_latency_seconds{kind}             summary: sum and count of attempt latencies
    queue_wait_seconds_total{kind}            time attempts waited for limiter permits
    requests_in_flight{kind}                  attempts sent and not answered yet
    phase_seconds_total{phase}                time in each step phase (update, checkpoint ...)
    event_loop_lag_seconds                    how late the last 0.25 s timer fired
    event_loop_lag_max_seconds                the worst lag seen
    step                                      steps done
    reward                                    the last step's mean reward
    step_seconds                              the last step's wall time
    up                                        1 while the run serves

Example::

    metrics = RunMetrics()
    metrics.attach(events)
    async with PrometheusServer(metrics, port=0) as server:
        print(server.url)        # http://127.0.0.1:PORT/metrics
        ...
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import ConfigError
from .events import EventLog

__all__ = ("CONTENT_TYPE", "PrometheusServer", "RunMetrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of the text exposition format."""

_LAG_INTERVAL = 0.25
"""Seconds between two event-loop lag probes."""

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    """A label value as the exposition format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _finite(v: object) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return 0.0


class RunMetrics:
    """The counters and gauges of one run, rendered by :meth:`render`.

    Event listeners and :meth:`observe_step` run on the event loop (or any one thread);
    :meth:`render` reads a consistent enough snapshot (each value is read once).
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.cancelled: Counter[str] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.cost: Counter[str] = Counter()
        self.latency_sum: Counter[str] = Counter()
        self.queue_wait: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()
        self.step = 0
        self.reward = math.nan
        self.step_seconds = math.nan
        self.lag = 0.0
        self.lag_max = 0.0
        self._events: EventLog | None = None

    def attach(self, events: EventLog) -> None:
        """Count every later request and phase event of ``events``; its requests in flight
        are read at each scrape."""
        self._events = events
        events.subscribe(self.observe)

    def observe(self, event: Mapping[str, Any]) -> None:
        """Count one event (an :class:`~engine.telemetry.events.EventLog` listener)."""
        kind = str(event.get("kind") or "generation")
        if kind == "phase":
            self.phases[str(event.get("phase"))] += _finite(event.get("duration"))
            return
        if kind == "log":
            return
        self.requests[kind] += 1
        err = event.get("error_class")
        if err == "cancelled":
            self.cancelled[kind] += 1
        elif err:
            self.errors[(kind, str(err))] += 1
        self.tokens[(kind, "prompt")] += int(_finite(event.get("prompt_tokens")))
        self.tokens[(kind, "completion")] += int(_finite(event.get("completion_tokens")))
        cost = event.get("cost_usd", event.get("cost"))
        self.cost[kind] += _finite(cost)
        self.latency_sum[kind] += _finite(event.get("latency"))
        self.queue_wait[kind] += _finite(event.get("queue_wait"))

    def observe_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """A finished step (0-based ``step``) and its metrics line."""
        self.step = step + 1
        self.reward = float(metrics["reward"]) if _finite(metrics.get("reward")) else math.nan
        if _finite(metrics.get("step_time")):
            self.step_seconds = float(metrics["step_time"])

    def observe_lag(self, lag: float) -> None:
        """How late the event loop ran a timer, in seconds."""
        self.lag = max(0.0, lag)
        self.lag_max = max(self.lag_max, self.lag)

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []

        def family(name: str, kind: str, doc: str, samples: list[tuple[Labels, float]]) -> None:
            full = f"grpo_{name}_total" if kind == "counter" else f"grpo_{name}"
            out.append(f"# HELP {full} {doc}")
            out.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                braces = f"{{{text}}}" if text else ""
                out.append(f"{full}{braces} {_number(value)}")

        kinds = sorted(set(self.requests) | {"generation"})
        in_flight = dict(self._events.in_flight) if self._events is not None else {}

        def per_kind(values: Mapping[str, float], names: list[str]) -> list[tuple[Labels, float]]:
            return [((("kind", k),), values.get(k, 0)) for k in names]

        errors = [
            ((("kind", k), ("error_class", c)), n) for (k, c), n in sorted(self.errors.items())
        ]
        tokens = [
            ((("kind", k), ("type", t)), self.tokens[(k, t)])
            for k in kinds
            for t in ("prompt", "completion")
        ]
        family("requests", "counter", "Request attempts.", per_kind(self.requests, kinds))
        family("request_errors", "counter", "Failed request attempts by error class.", errors)
        family("requests_cancelled", "counter", "Request attempts the engine cancelled.",
               per_kind(self.cancelled, kinds))  # fmt: skip
        family("tokens", "counter", "Tokens reported by the endpoints.", tokens)
        family("cost_usd", "counter", "Cost of the requests in US dollars, from the events.",
               per_kind(self.cost, kinds))  # fmt: skip
        out.extend(self._latency(kinds))
        family("queue_wait_seconds", "counter", "Time request attempts waited for permits.",
               per_kind(self.queue_wait, kinds))  # fmt: skip
        family("requests_in_flight", "gauge", "Request attempts sent and not answered yet.",
               per_kind(in_flight, sorted(set(kinds) | set(in_flight))))  # fmt: skip
        phases = [((("phase", p),), v) for p, v in sorted(self.phases.items())]
        family("phase_seconds", "counter", "Time spent in each phase of the steps.", phases)
        family("event_loop_lag_seconds", "gauge", "How late the event loop ran the last probe.",
               [((), self.lag)])  # fmt: skip
        family("event_loop_lag_max_seconds", "gauge", "The worst event-loop lag seen.",
               [((), self.lag_max)])  # fmt: skip
        family("step", "gauge", "Optimizer steps done.", [((), self.step)])
        family("reward", "gauge", "Mean reward of the last step.", [((), self.reward)])
        family("step_seconds", "gauge", "Wall time of the last step.", [((), self.step_seconds)])
        family("up", "gauge", "1 while the run serves its metrics.", [((), 1)])
        return "\n".join(out) + "\n"

    def _latency(self, kinds: list[str]) -> list[str]:
        name = "grpo_request_latency_seconds"
        lines = [f"# HELP {name} Latency of request attempts.", f"# TYPE {name} summary"]
        for k in kinds:
            label = f'kind="{_escape(k)}"'
            lines.append(f"{name}_sum{{{label}}} {_number(self.latency_sum[k])}")
            lines.append(f"{name}_count{{{label}}} {self.requests[k]}")
        return lines


class PrometheusServer:
    """Serves ``GET /metrics`` of a :class:`RunMetrics` while it is open, and probes the event
    loop's lag every 0.25 s.

    Args:
        metrics: what is served.
        host: the address to bind; ``127.0.0.1`` (the default) serves this machine only.
        port: the TCP port; 0 takes a free one (see :attr:`port` once open).

    Raises:
        ConfigError: on entry, when the address cannot be bound (in use, not local...).
    """

    def __init__(self, metrics: RunMetrics, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where the metrics are served."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def _handle(self, request: web.Request) -> web.Response:
        body = self.metrics.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def __aenter__(self) -> PrometheusServer:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self.host}:{self.port}"
            why = exc.strerror or str(exc)
            raise ConfigError(f"cannot serve Prometheus metrics on {where}: {why}",
                              key="telemetry.prometheus_port") from None  # fmt: skip
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])
        self._probe = asyncio.get_running_loop().create_task(self._probe_lag())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.wait([self._probe])  # its CancelledError stays in the task
        if self._runner is not None:
            await self._runner.cleanup()

    async def _probe_lag(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(_LAG_INTERVAL)
            self.metrics.observe_lag(time.perf_counter() - t0 - _LAG_INTERVAL)
