"""Where the time of each step went, read from a run's ``events.jsonl``.

A step is seen from the learner: it starts when the learner finished the previous step (or,
for the first step of a process, when its batch began to generate) and ends when the
learner's work on it (its ``step`` phase: ``update``, ``after_update``, ``eval``,
``checkpoint``, the metrics line, the callbacks) ended. Until its update begins the learner
waits for the batch's rollouts; what is in no phase after that is "other" (the metrics line
written and fsynced, the callbacks). The rollouts of batch ``k`` may
begin before step ``k`` does (generation runs ahead of the learner by ``max_staleness``).

:func:`build_timeline` reads the file twice, streaming: once for every step's totals
(:class:`StepTimeline`), once for the spans of the few steps drawn in detail (the slowest
ones and the last, or those asked for): each request attempt's queue wait (for a limiter
permit) and its time on the wire, each group's wait for admission, the batch's rollouts and
the learner's phases (:class:`Span`). Memory stays bounded by the number of steps plus the
events of the detailed steps. All times are wall clock (``ts`` of the events, minus their
``latency`` and ``queue_wait``).

Example::

    tl = build_timeline("runs/latest/events.jsonl")
    slow = tl.slowest(3)          # the 3 slowest steps
    tl.detail[slow[0].step]       # their spans
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ...errors import DataError
from ...telemetry.events import step_of
from ...telemetry.records import read_records

__all__ = ("LEARNER_PHASES", "Span", "StepTimeline", "Timeline", "build_timeline")

LEARNER_PHASES = ("update", "after_update", "eval", "checkpoint")
"""The phases of a step on the learner's path, in the order they run."""

DETAIL_SLOWEST = 3
"""Steps drawn in detail by default: this many slowest, and the last."""

MAX_DETAIL_SPANS = 20_000
"""At most this many spans kept per detailed step (a note says how many were left out)."""


@dataclass(frozen=True, slots=True)
class Span:
    """One bar of a step's timeline.

    Attributes:
        kind: ``queue`` (waiting for a limiter permit), ``admission`` (a group waiting to be
            admitted), a request kind (``generation``, ``judge`` ...), ``rollouts`` or a
            learner phase (``update`` ...), or ``waiting`` (the learner idle, waiting for
            the batch).
        start: wall time it began; ``end``: when it ended.
        row: what it belongs to: ``learner``, ``batch``, or a group id (``"3-1"``), or
            ``other`` (requests of no step: evaluation, reflection).
        error: the request's error class, when it failed.
        detail: a short description for its tooltip.
    """

    kind: str
    start: float
    end: float
    row: str
    error: str | None = None
    detail: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class StepTimeline:
    """The totals of one step.

    Attributes:
        step: the step index.
        start: wall time the step began (see the module docstring); NaN when unknown.
        end: wall time its last learner phase ended; NaN when it recorded none.
        first_activity: wall time its batch's first rollout, admission or request began.
        phases: seconds per learner phase (:data:`LEARNER_PHASES`).
        update_start: wall time its update began; NaN when it recorded none.
        rollouts: seconds the batch took to generate and score (its ``rollouts`` phase).
        requests: request attempts by kind; ``request_seconds``: their latencies summed.
        errors: failed attempts (cancelled ones excluded).
        queue_wait: seconds the attempts waited for permits, summed; ``queue_wait_max``:
            the longest wait.
        admission: seconds the groups waited for admission, summed.
    """

    step: int
    start: float = math.nan
    end: float = math.nan
    first_activity: float = math.inf
    phases: dict[str, float] = field(default_factory=dict)
    update_start: float = math.nan
    rollouts: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    request_seconds: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    queue_wait: float = 0.0
    queue_wait_max: float = 0.0
    admission: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds from the step's start to its end; NaN when either is unknown."""
        return self.end - self.start

    @property
    def waiting(self) -> float:
        """Seconds from the step's start to its update: the learner waits for rollouts."""
        if math.isnan(self.update_start):
            return max(0.0, self.duration - sum(self.phases.values()))
        return max(0.0, self.update_start - self.start)

    @property
    def other(self) -> float:
        """Seconds of the step in no phase after the update began (metrics written and
        fsynced, callbacks)."""
        return max(0.0, self.duration - self.waiting - sum(self.phases.values()))


@dataclass(slots=True)
class Timeline:
    """Every step's totals, and the spans of the detailed steps.

    Attributes:
        steps: one :class:`StepTimeline` per step with events, in step order.
        detail: spans per detailed step, ordered by start.
        dropped: per detailed step, spans left out beyond :data:`MAX_DETAIL_SPANS`.
        has_phases: whether the events hold phase events (runs before they existed do not).
        missing: steps asked for in detail that have no events.
    """

    steps: list[StepTimeline]
    detail: dict[int, list[Span]] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    has_phases: bool = False
    missing: list[int] = field(default_factory=list)

    def slowest(self, n: int) -> list[StepTimeline]:
        """The ``n`` steps with the longest known duration, slowest first."""
        known = [s for s in self.steps if math.isfinite(s.duration)]
        return sorted(known, key=lambda s: (-s.duration, s.step))[:n]

    def step(self, step: int) -> StepTimeline | None:
        """The totals of ``step``, or None when it has no events."""
        return next((s for s in self.steps if s.step == step), None)


def _records(path: Path, wanted: Callable[[bytes], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The events of ``path``; with ``wanted``, only the lines it keeps are parsed."""
    try:
        if wanted is None:
            yield from read_records(path)
            return
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.endswith(b"\n") and raw.strip() and wanted(raw):
                    yield orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DataError(f"invalid JSON line: {exc}", path=str(path)) from None


_GROUP = b'"group_id":"'


def _maybe_wanted(raw: bytes, steps: Collection[bytes]) -> bool:
    """False only for a line whose group id (as the engine writes it) names a step not in
    ``steps``: such lines need not be parsed."""
    at = raw.find(_GROUP)
    if at < 0:
        return True
    start = at + len(_GROUP)
    dash = raw.find(b"-", start, start + 12)
    return dash < 0 or raw[start:dash] in steps


def _num(v: object) -> float:
    """A number as float, else 0 (missing, null, text; JSON numbers are finite)."""
    t = type(v)
    return float(v) if t is float or t is int else 0.0  # type: ignore[arg-type]


def _times(ev: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """A request event's ``(queued, sent, ended)`` wall times; None without a usable ts."""
    end = ev.get("ts")
    if type(end) is not float and type(end) is not int:
        return None
    sent = end - _num(ev.get("latency"))
    return sent - _num(ev.get("queue_wait")), sent, float(end)


def _phase_step(ev: Mapping[str, Any]) -> int | None:
    step = ev.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else step_of(ev)


def _totals(path: Path) -> tuple[dict[int, StepTimeline], bool]:
    """Pass one: every step's totals, and whether the events hold phases."""
    steps: dict[int, StepTimeline] = {}
    has_phases = False
    for ev in _records(path):
        kind = ev.get("kind")
        if kind == "log":
            continue
        step = _phase_step(ev) if kind == "phase" else step_of(ev)
        if step is None or step < 0:
            continue
        st = steps.get(step)
        if st is None:
            st = steps[step] = StepTimeline(step)
        if kind == "phase":
            has_phases = True
            _add_phase(st, ev)
        else:
            _add_request(st, ev, str(kind or "generation"))
    return steps, has_phases


def _add_phase(st: StepTimeline, ev: Mapping[str, Any]) -> None:
    name, start, dur = str(ev.get("phase")), _num(ev.get("start")), _num(ev.get("duration"))
    if not start:
        return
    if name in LEARNER_PHASES or name == "step":  # "step" spans the learner's whole work
        if name != "step":
            st.phases[name] = st.phases.get(name, 0.0) + dur
        end = start + dur
        st.end = end if math.isnan(st.end) else max(st.end, end)
        if name == "update" and not start >= st.update_start:
            st.update_start = start
    elif name == "rollouts":
        st.rollouts += dur
    elif name == "admission":
        st.admission += dur
    st.first_activity = min(st.first_activity, start)


def _add_request(st: StepTimeline, ev: Mapping[str, Any], kind: str) -> None:
    latency, wait, end = _num(ev.get("latency")), _num(ev.get("queue_wait")), ev.get("ts")
    st.requests[kind] += 1
    st.request_seconds[kind] += latency
    st.queue_wait += wait
    if wait > st.queue_wait_max:
        st.queue_wait_max = wait
    err = ev.get("error_class")
    if err and err != "cancelled":
        st.errors += 1
    if type(end) is float or type(end) is int:
        queued = end - latency - wait
        if queued < st.first_activity:
            st.first_activity = queued


def _link_steps(steps: Mapping[int, StepTimeline]) -> None:
    """Each step starts when the previous one ended, or when its batch began (whichever is
    later: a resumed run's first step does not start at the step before the restart)."""
    prev_end = math.nan
    for k in sorted(steps):
        st = steps[k]
        first = st.first_activity if math.isfinite(st.first_activity) else math.nan
        if math.isnan(prev_end):
            st.start = first
        elif math.isnan(first):
            st.start = prev_end
        else:
            st.start = max(prev_end, first)
        if math.isfinite(st.end) and math.isfinite(st.start):
            st.start = min(st.start, st.end)
        prev_end = st.end if math.isfinite(st.end) else prev_end


def build_timeline(
    events: str | Path,
    *,
    steps: Collection[int] | None = None,
    slowest: int = DETAIL_SLOWEST,
) -> Timeline:
    """The timeline of a run's ``events.jsonl`` (blocking file I/O, two streaming passes).

    Args:
        events: the events file.
        steps: the steps to draw in detail; default the ``slowest`` slowest and the last.
        slowest: how many slowest steps are detailed by default.

    Raises:
        DataError: a line (other than a torn last one) is not valid JSON.
    """
    path = Path(events)
    by_step, has_phases = _totals(path)
    _link_steps(by_step)
    tl = Timeline([by_step[k] for k in sorted(by_step)], has_phases=has_phases)
    if steps is None:
        chosen = {s.step for s in tl.slowest(slowest)}
        if tl.steps:
            chosen.add(tl.steps[-1].step)
    else:
        chosen = {k for k in steps if k in by_step}
        tl.missing = sorted(set(steps) - chosen)
    if chosen:
        tl.detail, tl.dropped = _spans(path, {k: by_step[k] for k in sorted(chosen)})
    return tl


def _spans(
    path: Path, chosen: Mapping[int, StepTimeline]
) -> tuple[dict[int, list[Span]], dict[int, int]]:
    """Pass two: the spans of the chosen steps (requests of no step inside their windows)."""
    out: dict[int, list[Span]] = {k: [] for k in chosen}
    dropped: Counter[int] = Counter()
    windows = [(k, min(st.start, st.first_activity), st.end) for k, st in chosen.items()]

    def keep(k: int, span: Span) -> None:
        if len(out[k]) < MAX_DETAIL_SPANS:
            out[k].append(span)
        else:
            dropped[k] += 1

    wanted = {str(k).encode() for k in chosen}
    for ev in _records(path, lambda raw: _maybe_wanted(raw, wanted)):
        kind = ev.get("kind")
        if kind == "log":
            continue
        if kind == "phase":
            step = _phase_step(ev)
            if step in out and ev.get("phase") != "step":  # its parts are drawn instead
                keep(step, _phase_span(ev))
            continue
        step = step_of(ev)
        if step in out:
            for span in _request_spans(ev, str(ev.get("group_id") or "?")):
                keep(step, span)
        elif step is None and (times := _times(ev)) is not None:
            for k, lo, hi in windows:
                if lo <= times[1] and times[2] <= hi:  # an evaluation's requests, say
                    for span in _request_spans(ev, "other"):
                        keep(k, span)
    for k, st in chosen.items():
        first_update = min((s.start for s in out[k] if s.kind == "update"), default=math.nan)
        if math.isfinite(st.start) and first_update > st.start:
            out[k].append(Span("waiting", st.start, first_update, "learner",
                               detail="the learner waits for the batch"))  # fmt: skip
        out[k].sort(key=lambda s: (s.start, s.end))
    return out, dict(dropped)


def _phase_span(ev: Mapping[str, Any]) -> Span:
    name = str(ev.get("phase"))
    start = _num(ev.get("start"))
    end = start + _num(ev.get("duration"))
    if name == "admission":
        gid = str(ev.get("group_id") or "?")
        return Span("admission", start, end, gid, detail=f"group {gid} waits for admission")
    row = "batch" if name == "rollouts" else "learner"
    return Span(name, start, end, row, detail=name.replace("_", " "))


def _request_spans(ev: Mapping[str, Any], row: str) -> list[Span]:
    """A request attempt's queue wait (when it waited) and its time on the wire."""
    times = _times(ev)
    if times is None:
        return []
    queued, sent, end = times
    kind = str(ev.get("kind") or "generation")
    err = ev.get("error_class")
    who = f"{kind} {row}"
    if isinstance(ev.get("sample_index"), int):
        who += f" #{ev['sample_index']}"
    tokens = f"{int(_num(ev.get('prompt_tokens')))}+{int(_num(ev.get('completion_tokens')))}"
    detail = (
        f"{who}, attempt {ev.get('attempt', 1)}: {end - sent:.3f} s on the wire, "
        f"{sent - queued:.3f} s queued; status {ev.get('status')}; {tokens} tokens"
        + (f"; {err}" if err else "")
    )
    spans = [Span(kind, sent, end, row, error=str(err) if err else None, detail=detail)]
    if sent - queued > 0:
        spans.insert(0, Span("queue", queued, sent, row, detail=f"{who} waits for a permit"))
    return spans
