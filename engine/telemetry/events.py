"""Telemetry: per-request events, per-step metrics, and the request statistics between steps.

- :class:`EventLog` -> ``OUT/events.jsonl``: one line per request attempt (generation or judge),
  the phases of each step (``kind: "phase"``: rollouts, admission, step, update, eval, checkpoint;
  :meth:`EventLog.phase`), plus the log records the CLI sends there.
- :class:`MetricsLog` -> ``OUT/metrics.jsonl``: one line per optimizer step, fsynced.
- :class:`RequestTally` counts events between steps; its :class:`RequestStatistics` give the
  token, latency and error metrics of a step.

The lines are written by :class:`~engine.telemetry.records.JsonlWriter`, so a crash tears at
most the last line.
"""

from __future__ import annotations

import contextlib
import math
import operator
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .records import JsonlWriter, dumps

__all__ = (
    "LATENCY_SAMPLE",
    "PHASES",
    "EventListener",
    "EventLog",
    "LatencySample",
    "MetricsLog",
    "RequestStatistics",
    "RequestTally",
    "step_of",
)

EventListener = Callable[[Mapping[str, Any]], None]
"""Called with every request and phase event as it is emitted (:meth:`EventLog.subscribe`)."""

PHASES = ("rollouts", "admission", "step", "update", "after_update", "eval", "checkpoint")
"""The phases a run records (``kind: "phase"`` events, :meth:`EventLog.phase`):

- ``rollouts``: batch ``step`` generated and scored, from its first group to its last;
- ``admission``: group ``group_id`` waited this long to be admitted against the limits
  (recorded only when it waited);
- ``step``: the learner's whole work on batch ``step``, from its update to the end of its
  checkpoint (the phases below, the metrics line and the callbacks);
- ``update``: the learner's update on batch ``step``;
- ``after_update``: the policy's work after the update (e.g. new prompt candidates);
- ``eval``: the held-out evaluation after step ``step``;
- ``checkpoint``: the checkpoint written after step ``step``.
"""


LATENCY_SAMPLE = 8192
"""Latencies a :class:`RequestTally` keeps at most for its quantiles (a uniform sample of its
window once more have been recorded; p99 of 8,192 draws is within about 0.2 percentile points
of the window's)."""


class LatencySample:
    """A uniform sample of at most ``capacity`` of the latencies recorded (reservoir sampling,
    Vitter's algorithm R), so that the memory of a window never grows past ``capacity``
    floats however long it runs (an embedder that never calls
    :meth:`EventLog.step_metrics`). Below ``capacity`` it keeps every value.

    Example::

        sample = LatencySample(capacity=4)
        for x in range(100):
            sample.add(float(x))
        len(sample.values), sample.seen   # (4, 100)

    Attributes:
        values: the sample (every value while fewer than ``capacity`` were recorded).
        seen: values recorded since the last reset.
    """

    __slots__ = ("_below", "_rng", "capacity", "seen", "values")

    def __init__(self, capacity: int = LATENCY_SAMPLE, *, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(seed)  # deterministic: the same events, the same quantiles
        # what randrange(n) draws for an n > 0, without its argument checks (once per event)
        self._below = self._rng._randbelow

    def add(self, value: float) -> None:
        """Record one value."""
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        j = self._below(self.seen)
        if j < self.capacity:
            self.values[j] = value

    def merge(self, other: LatencySample) -> None:
        """Take in ``other``'s values: the union when both are whole and it fits, else a
        sample of ``capacity`` drawn from each side in proportion to what it has seen."""
        if not other.seen:
            return
        whole = self.seen == len(self.values) and other.seen == len(other.values)
        if whole and len(self.values) + len(other.values) <= self.capacity:
            self.values.extend(other.values)
            self.seen += other.seen
            return
        total = self.seen + other.seen
        take_other = min(len(other.values), round(self.capacity * other.seen / total))
        take_self = min(len(self.values), self.capacity - take_other)
        take_other = min(len(other.values), self.capacity - take_self)
        rng = self._rng
        self.values = rng.sample(self.values, take_self) + rng.sample(other.values, take_other)
        self.seen = total

    def clear(self) -> None:
        """Forget every value."""
        self.values = []
        self.seen = 0


@dataclass(frozen=True, slots=True)
class RequestStatistics:
    """Requests of one window (a step, or since the last report), as counted by a tally.

    An attempt the engine cancelled itself (``error_class: cancelled``: an oversampled
    straggler, the sibling of a failed fan-out, a shutdown) is not an error of the endpoint:
    it counts in ``cancelled``, not in ``errors`` or the error rate.

    Attributes:
        requests: request attempts, cancelled ones included.
        errors: failed attempts, cancelled ones excluded.
        cancelled: attempts the engine cancelled.
        prompt_tokens: prompt tokens reported by the endpoint.
        completion_tokens: completion tokens reported by the endpoint.
        cost: cost reported by the endpoint, where it reports one.
        cost_usd: what the requests cost in USD (the events' ``cost_usd``: the reported cost,
            else tokens at the model's price, else 0).
        latency_p50: median latency in seconds (0 without latencies); likewise p95 and p99.
        errors_by_class: failed attempts by error class (``rate_limit``, ``server`` ...).
        requests_by_kind: attempts by kind (``generation``, ``judge`` ...).
    """

    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_usd: float = 0.0
    latency_p50: float = 0.0
    latency_p95: float = 0.0
    latency_p99: float = 0.0
    errors_by_class: Mapping[str, int] = field(default_factory=dict)
    requests_by_kind: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """Errors per request attempt; 0 without requests."""
        return self.errors / self.requests if self.requests else 0.0

    def metrics(self) -> dict[str, float | int]:
        """The statistics named as in ``metrics.jsonl`` (``tokens/prompt``, ``latency/p95``)."""
        out: dict[str, float | int] = {
            "requests/total": self.requests,
            "requests/errors": self.errors,
            "requests/error_rate": self.error_rate,
            "requests/cancelled": self.cancelled,
            "tokens/prompt": self.prompt_tokens,
            "tokens/completion": self.completion_tokens,
            "cost": self.cost,
            "cost/step_usd": self.cost_usd,
            "latency/p50": self.latency_p50,
            "latency/p95": self.latency_p95,
            "latency/p99": self.latency_p99,
        }
        for cls, n in sorted(self.errors_by_class.items()):
            out[f"errors/{cls}"] = n
        for kind, n in sorted(self.requests_by_kind.items()):
            out[f"requests/{kind}"] = n
        return out


_TALLIED = operator.itemgetter(
    "kind", "prompt_tokens", "completion_tokens", "cost", "cost_usd", "latency", "error_class"
)


class RequestTally:
    """Counts request events: tokens, latencies, errors by class, requests by kind.

    Example::

        tally = RequestTally()
        tally.record({"kind": "generation", "latency": 0.2, "prompt_tokens": 12})
        tally.statistics().metrics()["latency/p50"]   # 0.2
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every count: a new window starts."""
        self.requests = 0
        self.errors = 0
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.cost_usd = 0.0
        self.latencies = LatencySample()
        self.error_classes: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()

    def record(self, event: Mapping[str, Any]) -> None:
        """Count one request event (the fields :meth:`EventLog.emit` writes).

        Latencies are kept as a bounded uniform sample (:class:`LatencySample`), so a window
        that is never reset stays within :data:`LATENCY_SAMPLE` floats."""
        try:  # a client's attempt event has every field: one lookup for all of them
            kind, pt, ct, cost, cost_usd, latency, err = _TALLIED(event)
        except KeyError:
            get = event.get
            kind, pt, ct = get("kind", "generation"), get("prompt_tokens"), get("completion_tokens")
            cost, cost_usd, latency = get("cost"), get("cost_usd"), get("latency")
            err = get("error_class")
        self.requests += 1
        self.by_kind[kind if type(kind) is str else str(kind)] += 1
        # int(x or 0) and float(x or 0.0), without the conversion where x already is one
        if pt:
            self.prompt_tokens += pt if type(pt) is int else int(pt)
        if ct:
            self.completion_tokens += ct if type(ct) is int else int(ct)
        if cost:
            self.cost += cost if type(cost) is float else float(cost)
        if cost_usd:
            self.cost_usd += cost_usd if type(cost_usd) is float else float(cost_usd)
        if latency is not None:
            self.latencies.add(latency if type(latency) is float else float(latency))
        if err == "cancelled":
            self.cancelled += 1
        elif err:
            self.errors += 1
            self.error_classes[str(err)] += 1

    def merge(self, other: RequestTally) -> None:
        """Add ``other``'s counts into this one."""
        self.requests += other.requests
        self.errors += other.errors
        self.cancelled += other.cancelled
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.cost_usd += other.cost_usd
        self.latencies.merge(other.latencies)
        self.error_classes.update(other.error_classes)
        self.by_kind.update(other.by_kind)

    def statistics(self) -> RequestStatistics:
        """A frozen snapshot of the counts since the last reset."""
        lat = np.asarray(self.latencies.values, dtype=np.float64)
        if lat.size:
            p50, p95, p99 = (float(x) for x in np.percentile(lat, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        return RequestStatistics(
            requests=self.requests,
            errors=self.errors,
            cancelled=self.cancelled,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            cost_usd=self.cost_usd,
            latency_p50=p50,
            latency_p95=p95,
            latency_p99=p99,
            errors_by_class=dict(self.error_classes),
            requests_by_kind=dict(self.by_kind),
        )


class EventLog:
    """Per-request events to ``events.jsonl``, and the request statistics of each step.

    Example::

        events = EventLog("runs/x/events.jsonl")
        events.emit(kind="generation", endpoint="/v1/completions", status=200, latency=0.21,
                    attempt=1, prompt_tokens=12, completion_tokens=30)

    Events are buffered in memory and written in one call per ``flush`` (every
    ``flush_every`` events and at each step), which keeps per-request cost to a dict and an
    orjson call. ``path=None`` keeps only the statistics. An event belongs to the step of its
    ``step`` field or of its ``STEP-J`` group id; requests of no step (evaluation, reflection)
    are reported with the next step.

    A phase of a step (:meth:`phase`) is one line ``{"kind": "phase", "phase": "update",
    "step": 3, "start": <wall s>, "ts": <wall s at its end>, "duration": <s>, "mono_start":
    ..., "mono_end": ...}`` (``time.time`` and ``time.monotonic``); it is not a request.
    Request events carry ``queue_wait``: seconds the attempt waited for a limiter permit
    before it was sent (its ``latency`` starts at the send; both end at ``ts``). A request
    of a multi-turn episode (:mod:`engine.environments`) also carries ``episode`` (its id)
    and ``turn`` (from 0).

    Attributes:
        count: request events emitted in total.
        in_flight: requests sent and not answered yet, by kind (:meth:`track`).
    """

    def __init__(self, path: str | Path | None = None, *, flush_every: int = 256) -> None:
        self._writer = JsonlWriter(path)
        self._buf: list[bytes] = []
        self._flush_every = flush_every
        self._unstepped = RequestTally()
        self._by_step: dict[int, RequestTally] = {}
        self._listeners: list[EventListener] = []
        self.count = 0
        self.in_flight: Counter[str] = Counter()

    @property
    def path(self) -> Path | None:
        """The events file, or None when only statistics are kept."""
        return self._writer.path

    def emit(self, **fields: Any) -> None:
        """Record one request attempt. ``ts`` is added when missing."""
        self.emit_event(fields)

    def emit_event(self, fields: dict[str, Any]) -> None:
        """Record one request attempt given as a dict, which the log takes over (it adds
        ``ts`` when missing and keeps the dict for its listeners): :meth:`emit` without
        building the keyword arguments again, for the client's per-attempt events."""
        if "ts" not in fields:
            fields["ts"] = time.time()
        step = step_of(fields)
        if step is None:
            tally = self._unstepped
        else:
            tally = self._by_step.get(step)
            if tally is None:
                tally = self._by_step[step] = RequestTally()
        tally.record(fields)
        self.count += 1
        if self._listeners:
            self._notify(fields)
        if self._writer.enabled:
            self._buf.append(dumps(fields))
            if len(self._buf) >= self._flush_every:
                self.flush()

    def subscribe(self, listener: EventListener) -> None:
        """Call ``listener`` with every later request and phase event (synchronously, on the
        emitting thread: it must be quick). A listener that raises is dropped, not retried."""
        self._listeners.append(listener)

    def _notify(self, fields: Mapping[str, Any]) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(fields)
            except Exception:  # an observer never breaks the run
                self._listeners.remove(listener)

    @contextlib.contextmanager
    def track(self, kind: str) -> Iterator[None]:
        """Count a request of ``kind`` in :attr:`in_flight` while the block runs."""
        self.in_flight[kind] += 1
        try:
            yield
        finally:
            self.in_flight[kind] -= 1

    @contextlib.contextmanager
    def phase(self, name: str, *, step: int | None = None, **fields: Any) -> Iterator[None]:
        """Record the block as phase ``name`` of ``step`` when it completes (see the class
        docstring; a block that raises records nothing)."""
        wall, mono = time.time(), time.monotonic()
        yield
        self.record_phase(name, start=wall, duration=time.monotonic() - mono, step=step,
                          mono_start=mono, **fields)  # fmt: skip

    def record_phase(
        self,
        name: str,
        *,
        start: float,
        duration: float,
        step: int | None = None,
        mono_start: float | None = None,
        **fields: Any,
    ) -> None:
        """Record a phase measured elsewhere: it began at wall time ``start`` and lasted
        ``duration`` seconds (an unknown ``start``, NaN, records nothing)."""
        if not math.isfinite(start):
            return
        event: dict[str, Any] = {"kind": "phase", "phase": name, "step": step, **fields}
        event.update(start=start, ts=start + duration, duration=duration)
        if mono_start is not None:
            event.update(mono_start=mono_start, mono_end=mono_start + duration)
        self._notify(event)
        if self._writer.enabled:
            self._buf.append(dumps(event))

    def statistics(self) -> RequestStatistics:
        """The requests recorded and not yet reported by :meth:`step_metrics`, of any step."""
        tally = RequestTally()
        tally.merge(self._unstepped)
        for step in sorted(self._by_step):
            tally.merge(self._by_step[step])
        return tally.statistics()

    def step_metrics(self, step: int) -> dict[str, float | int]:
        """Metrics of the requests made for batch ``step`` (and any earlier batch not yet
        reported), plus requests of no step since the last call; resets what it reports."""
        merged = self._unstepped
        for s in sorted(k for k in self._by_step if k <= step):
            merged.merge(self._by_step.pop(s))
        statistics = merged.statistics()
        merged.reset()
        return statistics.metrics()

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
        """Write what is buffered and close the file."""
        self.flush()
        self._writer.close()

    async def __aenter__(self) -> EventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class MetricsLog:
    """One JSON line per optimizer step to ``metrics.jsonl``, fsynced each step."""

    def __init__(self, path: str | Path | None) -> None:
        self._writer = JsonlWriter(path)

    def write(self, record: Mapping[str, object]) -> None:
        """Append the record of one step and force it to disk."""
        self._writer.write(record)
        self._writer.fsync()

    def close(self) -> None:
        self._writer.close()


def step_of(fields: Mapping[str, object]) -> int | None:
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
